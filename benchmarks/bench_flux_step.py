"""FLUX-architecture GRPO step at realistic size (random weights): samples/s and model-FLOPs utilisation (issue 3 item 10).

Two measurements on one ``FluxTransformer2DModel`` built from a config (no download):

1. **Forward** (what rollouts spend): ``--batch`` latents of ``--resolution`` px through the transformer, bf16
   weights, no grad. FLOPs per forward are *counted* by ``torch.utils.flop_counter.FlopCounterMode`` on one call (the
   matmuls and attention that actually run), not estimated, so MFU = counted FLOPs / wall time / peak.
2. **Training iteration** (rollout + loss + backward + optimizer step) of :class:`FlowGRPOTrainer` in ``--mode``
   (E-GRPO by default) with LoRA (the frozen base in bf16): wall time per iteration, images sampled per second, and
   the FLOPs of one whole iteration counted the same way (forward, backward and — with gradient checkpointing — the
   recomputed forward, so that figure is hardware utilisation, HFU, and says so).

Peak FLOP/s: ``--peak-tflops`` or, from the device name, the dense bf16 peak of an H100/H200 SXM (989 TFLOP/s) or
A100 (312); on CPU no peak is assumed and utilisation is not printed.

Usage::

    python benchmarks/bench_flux_step.py --preset flux-dev --resolution 512 --json flux.json     # one GPU
    python benchmarks/bench_flux_step.py --preset tiny --device cpu                                # smoke run

``flux-dev`` is FLUX.1-dev's transformer config (19 double + 38 single blocks, 24 heads × 128, T5 4096-d text
tokens, 768-d pooled; ~11.9B parameters, ~24 GB in bf16). It has not been run yet: no GPU was lent to the sessions
that wrote it. The ``tiny`` preset runs in seconds on CPU and is what the test suite exercises.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

PRESETS = {
    # FLUX.1-dev transformer/config.json (diffusers): in_channels 64 = 16 latent channels packed 2x2
    "flux-dev": dict(num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                     joint_attention_dim=4096, pooled_projection_dim=768, in_channels=64, text_tokens=512,
                     vae_scale_factor=8),
    "tiny": dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=32, pooled_projection_dim=32, in_channels=16, text_tokens=8, vae_scale_factor=8),
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def build_model(preset: dict, device: torch.device, dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel

    head = preset["attention_head_dim"]
    rope = (head // 8, 7 * head // 16, 7 * head // 16) if head == 128 else (head // 4, head // 4, head // 2)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 directly: 12B parameters in fp32 would need 48 GB first
    try:
        with torch.device(device):  # initialised in place, not on the CPU first
            model = FluxTransformer2DModel(
                patch_size=1, in_channels=preset["in_channels"], num_layers=preset["num_layers"],
                num_single_layers=preset["num_single_layers"], attention_head_dim=head,
                num_attention_heads=preset["num_attention_heads"], joint_attention_dim=preset["joint_attention_dim"],
                pooled_projection_dim=preset["pooled_projection_dim"], guidance_embeds=True, axes_dims_rope=rope)
    finally:
        torch.set_default_dtype(default)
    return model


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_BF16_TFLOPS.items() if key in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_benchmark(model, preset: dict, args, device: torch.device) -> dict:
    from rlpost.models.flow import PromptEmbeds, get_flow_adapter

    adapter = get_flow_adapter("flux")
    size = args.resolution // preset["vae_scale_factor"]
    channels = preset["in_channels"] // 4
    x = torch.randn(args.batch, channels, size, size, device=device)
    t = torch.full((args.batch,), 0.7, device=device)
    cond = PromptEmbeds(torch.randn(args.batch, preset["text_tokens"], preset["joint_attention_dim"], device=device),
                        torch.randn(args.batch, preset["pooled_projection_dim"], device=device))
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            adapter.velocity(model, x, t, cond)
        flops = counter.get_total_flops()
        for _ in range(args.warmup):
            adapter.velocity(model, x, t, cond)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.repeats):
            adapter.velocity(model, x, t, cond)
        synchronize(device)
    seconds = (time.perf_counter() - start) / args.repeats
    return {"batch": args.batch, "image_tokens": (size // 2) ** 2, "text_tokens": preset["text_tokens"],
            "flops_per_forward": flops, "s_per_forward": seconds, "samples_per_s": args.batch / seconds,
            "achieved_tflops": flops / seconds / 1e12}


def make_trainer(model, preset: dict, args, device: torch.device):
    from rlpost.models.flow import LatentRGBDecoder, RandomPromptEncoder
    from rlpost.rewards.image import PromptColor
    from rlpost.trainers.flow_grpo import FlowGRPOConfig, FlowGRPOTrainer

    config = FlowGRPOConfig(
        output_dir="/tmp/bench_flux_step", mode=args.mode, max_steps=args.iterations, seed=0,
        use_cpu=device.type == "cpu", mixed_precision="bf16" if device.type == "cuda" else "no",
        num_inference_steps=args.steps, resolution=args.resolution, vae_scale_factor=preset["vae_scale_factor"],
        num_generations=args.generations, prompts_per_step=1, num_active_steps=args.active_steps,
        use_lora=True, lora_r=args.lora_r, lora_alpha=2 * args.lora_r, gradient_checkpointing=args.checkpointing,
        save_model=False, report_to="none", sample_images_every=0)
    encoder = RandomPromptEncoder(preset["text_tokens"], preset["joint_attention_dim"], preset["pooled_projection_dim"])
    return FlowGRPOTrainer(model, [PromptColor()], config, prompt_encoder=encoder,
                           decoder=LatentRGBDecoder(preset["in_channels"] // 4), prompts=["a red square"])


def training_benchmark(model, preset: dict, args, device: torch.device) -> dict:
    trainer = make_trainer(model, preset, args, device)
    trainer.step()  # warm-up (allocator, kernels, LoRA init)
    with FlopCounterMode(display=False) as counter:
        trainer.step()
    flops = counter.get_total_flops()
    synchronize(device)
    times, images = [], 0
    for _ in range(args.iterations):
        start = time.perf_counter()
        trainer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
        images = int(trainer.last_rollout.latents.shape[0])
    seconds = sum(times) / len(times)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"mode": args.mode, "generations": args.generations, "steps": args.steps,
            "active_steps": args.active_steps, "gradient_checkpointing": args.checkpointing,
            "images_per_iteration": images, "s_per_iteration": seconds, "images_per_s": images / seconds,
            "flops_per_iteration": flops, "achieved_tflops": flops / seconds / 1e12, "max_memory_gib": memory}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="flux-dev")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="forward benchmark batch")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mode", default="e_grpo", choices=["e_grpo", "flow_grpo", "dance_grpo"])
    parser.add_argument("--steps", type=int, default=16, help="sampling steps T (paper: 16)")
    parser.add_argument("--active-steps", type=int, default=8, help="E-GRPO active steps (paper: first 8)")
    parser.add_argument("--generations", type=int, default=4, help="group size G (paper: 12)")
    parser.add_argument("--iterations", type=int, default=2, help="timed training iterations")
    parser.add_argument("--lora-r", type=int, default=32)
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--no-train", action="store_true", help="forward benchmark only")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    preset = PRESETS[args.preset]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(preset, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    result = {"preset": args.preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": str(dtype), "parameters": params, "resolution": args.resolution,
              "forward": forward_benchmark(model, preset, args, device)}
    if not args.no_train:
        result["train"] = training_benchmark(model, preset, args, device)
    peak = peak_flops(device, args.peak_tflops)
    result["peak_tflops"] = peak / 1e12 if peak else None
    if peak:
        result["forward"]["mfu"] = result["forward"]["achieved_tflops"] * 1e12 / peak
        if "train" in result:  # counted ops include the checkpointing recompute: hardware, not model, utilisation
            key = "hfu" if args.checkpointing else "mfu"
            result["train"][key] = result["train"]["achieved_tflops"] * 1e12 / peak

    fwd = result["forward"]
    print(f"{args.preset}: {params / 1e9:.2f}B parameters, {result['device']}, {dtype}, {args.resolution}px "
          f"({fwd['image_tokens']} image + {fwd['text_tokens']} text tokens)")
    print(f"forward  batch {fwd['batch']}: {fwd['samples_per_s']:.2f} samples/s, "
          f"{fwd['flops_per_forward'] / args.batch / 1e12:.2f} TFLOP per sample, {fwd['achieved_tflops']:.1f} TFLOP/s"
          + (f", MFU {fwd['mfu']:.1%}" if "mfu" in fwd else ""))
    if "train" in result:
        tr = result["train"]
        util = next(((k.upper(), tr[k]) for k in ("mfu", "hfu") if k in tr), None)
        print(f"train    {tr['mode']} G={tr['generations']}: {tr['s_per_iteration']:.2f} s/iteration, "
              f"{tr['images_per_s']:.2f} images/s, {tr['achieved_tflops']:.1f} TFLOP/s"
              + (f", {util[0]} {util[1]:.1%}" if util else "")
              + (f", peak memory {tr['max_memory_gib']:.1f} GiB" if tr["max_memory_gib"] else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
