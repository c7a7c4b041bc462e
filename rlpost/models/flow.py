"""Flow-model adapters, tiny offline builders, prompt encoders and latent decoders for flow-model GRPO.

A trainer never calls a diffusers transformer directly. It calls an adapter, which hides each model's input layout
behind one signature::

    v = adapter.velocity(model, latents[B, C, H, W], t[B], cond)  ->  v[B, C, H, W]

with t ∈ (0, 1] the flow time of every sample (t = 1 noise, t = 0 data, spec e-grpo.md §1.1) and v ≈ ε − x0. Per-sample
``t`` is what lets the trainer batch (trajectory, timestep) pairs from different steps into one forward pass.

- ``"flux"``: :class:`diffusers.FluxTransformer2DModel`. Latents are packed into 2×2 patches (FluxPipeline's
  ``_pack_latents``), the model gets ``timestep = t`` (the pipeline divides its 0–1000 timesteps by 1000) and the
  distilled ``guidance`` scale (3.5 for FLUX.1-dev; E-GRPO / VisualGRPO use it without CFG).
- ``"sd3"``: :class:`diffusers.SD3Transformer2DModel`. Unpacked latents, ``timestep = 1000·t`` (the SD3 pipeline's
  scale). No CFG during RL rollouts (Flow-GRPO's "no-CFG training" option; a departure from SD3 sampling defaults).

Register more with :func:`register_flow_adapter`. Prompt conditioning comes from a prompt encoder:
:class:`RandomPromptEncoder` (fixed random embeddings per prompt: offline tests and the CPU demo; the text itself
carries no meaning for the model, only the identity of the prompt does), :class:`PrecomputedPromptEncoder` (a
``torch.save`` file of embeddings, as VisualGRPO preprocesses them), or :class:`PipelinePromptEncoder` (a diffusers
pipeline's own text encoders). Images come from a decoder: :class:`LatentRGBDecoder` (a fixed linear map from latent
channels to RGB, the "latent preview" trick: cheap and offline) or :class:`VAEDecoder` (a diffusers ``AutoencoderKL``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "FlowAdapter",
    "FluxAdapter",
    "SD3Adapter",
    "PromptEmbeds",
    "RandomPromptEncoder",
    "PrecomputedPromptEncoder",
    "PipelinePromptEncoder",
    "LatentRGBDecoder",
    "VAEDecoder",
    "get_flow_adapter",
    "list_flow_adapters",
    "register_flow_adapter",
    "tiny_flow_transformer",
    "tiny_autoencoder",
    "load_flow_transformer",
    "pack_latents",
    "unpack_latents",
]


# ----------------------------------------------------------------------------- conditioning


@dataclass
class PromptEmbeds:
    """Conditioning for a batch of prompts, one row per prompt (``index`` and ``to`` keep the fields together).

    - ``embeds [B, S, D]``: text tokens (T5 for FLUX/SD3, Qwen2.5-VL hidden states for Qwen-Image-Edit).
    - ``pooled [B, P]``: CLIP pooled embedding (FLUX, SD3); None for models without one (Qwen-Image).
    - ``image_latents [B, C, H, W]``: for image editing, the source image in latent space (what Qwen-Image-Edit and
      FLUX Kontext feed the transformer beside the noisy latents). Text-to-image adapters ignore it.
    - ``text_mask [B, S]`` (bool, True = real token): padding mask of ``embeds`` for models that take one; None means
      every token is real. Kept as bool through ``to(device, dtype)``: a mask must not be cast to bf16.
    """

    embeds: Tensor
    pooled: Tensor | None = None
    image_latents: Tensor | None = None
    text_mask: Tensor | None = None

    def __post_init__(self) -> None:
        b = self.embeds.shape[0] if self.embeds.ndim == 3 else None
        if b is None or (self.pooled is not None and (self.pooled.ndim != 2 or self.pooled.shape[0] != b)):
            pooled = None if self.pooled is None else tuple(self.pooled.shape)
            raise ValueError(f"PromptEmbeds needs embeds [B, S, D] and pooled [B, P] (or None) with one batch size, "
                             f"got {tuple(self.embeds.shape)} and {pooled}.")
        if self.image_latents is not None and (self.image_latents.ndim != 4 or self.image_latents.shape[0] != b):
            raise ValueError(f"PromptEmbeds.image_latents must be [B, C, H, W] with B = {b}, got "
                             f"{tuple(self.image_latents.shape)}.")
        if self.text_mask is not None:
            if tuple(self.text_mask.shape) != tuple(self.embeds.shape[:2]):
                raise ValueError(f"PromptEmbeds.text_mask must be [B, S] = {tuple(self.embeds.shape[:2])} like embeds, "
                                 f"got {tuple(self.text_mask.shape)}.")
            self.text_mask = self.text_mask.bool() if self.text_mask.is_floating_point() else self.text_mask > 0

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @staticmethod
    def _rows(x: Tensor | None, rows: Tensor) -> Tensor | None:
        return None if x is None else x[rows.to(x.device)]

    def index(self, rows: Tensor | Sequence[int]) -> "PromptEmbeds":
        """Rows of the batch, e.g. ``cond.index(prompt_of_sample)`` to expand one embedding per group member."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.embeds.device)
        return PromptEmbeds(self.embeds[rows], self._rows(self.pooled, rows), self._rows(self.image_latents, rows),
                            self._rows(self.text_mask, rows))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PromptEmbeds":
        def cast(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(device, dtype)

        mask = None if self.text_mask is None else self.text_mask.to(device)
        return PromptEmbeds(cast(self.embeds), cast(self.pooled), cast(self.image_latents), mask)

    def require_pooled(self, adapter: str) -> Tensor:
        if self.pooled is None:
            raise ValueError(f"the {adapter} adapter needs pooled prompt embeddings [B, P] (CLIP pooled), but "
                             "PromptEmbeds.pooled is None; use a prompt encoder for this model family "
                             "(PipelinePromptEncoder, PrecomputedPromptEncoder or RandomPromptEncoder).")
        return self.pooled


def _prompt_seed(prompt: str, seed: int) -> int:
    # Python's hash() is salted per process; embeddings must match across processes and runs.
    digest = hashlib.blake2b(f"{seed}\x00{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class RandomPromptEncoder:
    """Fixed random N(0, 1) embeddings per prompt string, seeded from the prompt's hash (offline tests and demos).

    The same prompt always maps to the same tensors (in every process), different prompts to independent ones, so a
    tiny model can learn prompt-specific behaviour without any text encoder. The words themselves mean nothing here.

    Args:
        seq_len: S, tokens per prompt.
        dim: D, must equal the transformer's ``joint_attention_dim``.
        pooled_dim: P, must equal its ``pooled_projection_dim``.
        seed: mixes into every prompt's seed.
    """

    def __init__(self, seq_len: int, dim: int, pooled_dim: int, seed: int = 0) -> None:
        self.seq_len, self.dim, self.pooled_dim, self.seed = seq_len, dim, pooled_dim, seed

    def __call__(self, prompts: Sequence[str]) -> PromptEmbeds:
        embeds, pooled = [], []
        for prompt in prompts:
            g = torch.Generator().manual_seed(_prompt_seed(prompt, self.seed))
            embeds.append(torch.randn(self.seq_len, self.dim, generator=g))
            pooled.append(torch.randn(self.pooled_dim, generator=g))
        return PromptEmbeds(torch.stack(embeds), torch.stack(pooled))


class PrecomputedPromptEncoder:
    """Embeddings looked up from ``{prompt: (embeds [S, D], pooled [P])}``, or a ``torch.save`` file of that dict.

    This is how VisualGRPO trains FLUX: text embeddings are computed once (``preprocess_flux_rl_embeddings.sh``), so
    the T5/CLIP encoders never sit in GPU memory during RL.
    """

    def __init__(self, table: Mapping[str, tuple[Tensor, Tensor]] | str) -> None:
        self.table = torch.load(table, map_location="cpu") if isinstance(table, str) else dict(table)

    def __call__(self, prompts: Sequence[str]) -> PromptEmbeds:
        missing = [p for p in prompts if p not in self.table]
        if missing:
            raise KeyError(
                f"no precomputed embedding for {len(missing)} prompt(s), e.g. {missing[0]!r}. Recompute the embedding "
                "file for this prompt set, or use PipelinePromptEncoder to encode on the fly."
            )
        embeds = torch.stack([torch.as_tensor(self.table[p][0]) for p in prompts])
        pooled = torch.stack([torch.as_tensor(self.table[p][1]) for p in prompts])
        return PromptEmbeds(embeds, pooled)


class PipelinePromptEncoder:
    """A diffusers pipeline's own text encoders (``FluxPipeline`` / ``StableDiffusion3Pipeline.encode_prompt``).

    Load the pipeline with ``transformer=None, vae=None`` to keep only the encoders. Embeddings are cached per prompt
    (prompt sets are small compared with the number of rollouts), computed without gradients.
    """

    def __init__(self, pipeline: Any, max_sequence_length: int = 512, cache: bool = True) -> None:
        self.pipeline, self.max_sequence_length = pipeline, max_sequence_length
        self._cache: dict[str, tuple[Tensor, Tensor]] | None = {} if cache else None

    @torch.no_grad()
    def _encode(self, prompt: str) -> tuple[Tensor, Tensor]:
        out = self.pipeline.encode_prompt(
            prompt=prompt, prompt_2=None, max_sequence_length=self.max_sequence_length,
            **({"prompt_3": None, "do_classifier_free_guidance": False} if hasattr(self.pipeline, "text_encoder_3")
               else {}),
        )
        # Flux: (embeds, pooled, text_ids); SD3: (embeds, neg_embeds, pooled, neg_pooled).
        embeds, pooled = (out[0], out[2]) if len(out) == 4 else (out[0], out[1])
        return embeds[0].cpu(), pooled[0].cpu()

    def __call__(self, prompts: Sequence[str]) -> PromptEmbeds:
        pairs = []
        for prompt in prompts:
            if self._cache is not None and prompt in self._cache:
                pairs.append(self._cache[prompt])
                continue
            pair = self._encode(prompt)
            if self._cache is not None:
                self._cache[prompt] = pair
            pairs.append(pair)
        return PromptEmbeds(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))


# ----------------------------------------------------------------------------- decoders


class LatentRGBDecoder:
    """Images from latents by a fixed random linear map C → 3 and a sigmoid: ``img = σ(W·x + b)``, [N, 3, H, W].

    The "latent preview" decoder (a linear latent-to-RGB projection, as UIs preview SD/FLUX latents), with seeded random
    weights: no VAE, no download, one einsum. Image rewards read a real function of the sample, so RL on a tiny model
    gets a genuine learning signal. ``upscale`` repeats pixels (nearest) to mimic the VAE's 8× spatial factor.
    """

    def __init__(self, latent_channels: int, seed: int = 0, upscale: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(3, latent_channels, generator=g) / latent_channels**0.5  # [3, C]
        self.bias = torch.zeros(3)
        self.upscale = upscale

    @torch.no_grad()
    def __call__(self, latents: Tensor) -> Tensor:
        x = latents.float()
        rgb = torch.einsum("kc,nchw->nkhw", self.weight.to(x.device), x)  # [N, 3, H, W]
        img = torch.sigmoid(rgb + self.bias.to(x.device)[:, None, None])
        if self.upscale > 1:
            img = img.repeat_interleave(self.upscale, dim=2).repeat_interleave(self.upscale, dim=3)
        return img.cpu()


class VAEDecoder:
    """``AutoencoderKL.decode`` with the model's ``scaling_factor`` / ``shift_factor``, to images in [0, 1].

    FluxPipeline decodes ``latents / scaling_factor + shift_factor`` and maps [-1, 1] to [0, 1]; this does the same on
    unpacked latents [N, C, H, W] in chunks of ``batch_size``.
    """

    def __init__(self, vae: Any, batch_size: int = 8) -> None:
        self.vae, self.batch_size = vae, batch_size

    @torch.no_grad()
    def __call__(self, latents: Tensor) -> Tensor:
        cfg = self.vae.config
        scale, shift = cfg.scaling_factor, getattr(cfg, "shift_factor", None) or 0.0
        dtype = next(self.vae.parameters()).dtype
        images = []
        for chunk in latents.split(self.batch_size):
            x = chunk.to(dtype) / scale + shift
            images.append(((self.vae.decode(x, return_dict=False)[0].float() + 1) / 2).clamp(0, 1).cpu())
        return torch.cat(images)


# ----------------------------------------------------------------------------- packing


def pack_latents(latents: Tensor) -> Tensor:
    """[B, C, H, W] → [B, (H/2)·(W/2), 4C], FluxPipeline's ``_pack_latents`` (2×2 patches, channels last)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX packs 2x2 latent patches: latent height and width must be even, got {h}x{w}.")
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`pack_latents` for latent size ``height × width``: [B, L, 4C] → [B, C, H, W]."""
    b, _, d = packed.shape
    x = packed.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def _image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """FLUX RoPE position ids of the packed latent grid: [(H/2)·(W/2), 3] = (0, row, col)."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------- adapters


def _unwrap(model: Any) -> Any:
    """The diffusers model inside a DDP / DeepSpeed wrapper, for its config and dtype. The forward still goes through
    the wrapper, which is what synchronizes gradients across processes."""
    return getattr(model, "module", model)


class FlowAdapter:
    """How one model family is called, built tiny, and loaded. Subclass and :func:`register_flow_adapter` it."""

    name: str = ""

    def latent_channels(self, model: Any) -> int:
        raise NotImplementedError

    def velocity(self, model: Any, latents: Tensor, t: Tensor, cond: PromptEmbeds, guidance: float = 3.5) -> Tensor:
        """v_θ(x_t, t, c): latents [B, C, H, W], t [B] in (0, 1], cond of batch B → [B, C, H, W] float32."""
        raise NotImplementedError

    def build_tiny(self, **options: Any) -> Any:
        raise NotImplementedError

    def load(self, name_or_path: str, **options: Any) -> Any:
        raise NotImplementedError

    def check_inputs(self, latents: Tensor, t: Tensor, cond: PromptEmbeds) -> None:
        if latents.ndim != 4:
            raise ValueError(f"latents must be [B, C, H, W], got {tuple(latents.shape)}.")
        if t.shape != latents.shape[:1] or len(cond) != latents.shape[0]:
            raise ValueError(
                f"velocity needs one t and one prompt embedding per latent: latents {tuple(latents.shape)}, t "
                f"{tuple(t.shape)}, cond batch {len(cond)}. Index the conditioning with cond.index(rows)."
            )


class FluxAdapter(FlowAdapter):
    """``FluxTransformer2DModel`` (FLUX.1-dev / schnell): packed latents, t in [0, 1], distilled guidance."""

    name = "flux"

    def latent_channels(self, model: Any) -> int:
        return _unwrap(model).config.in_channels // 4

    def velocity(self, model, latents, t, cond, guidance=3.5):
        self.check_inputs(latents, t, cond)
        b, c, h, w = latents.shape
        inner = _unwrap(model)
        dtype = inner.dtype
        g = torch.full((b,), float(guidance), device=latents.device) if inner.config.guidance_embeds else None
        out = model(
            hidden_states=pack_latents(latents).to(dtype),
            encoder_hidden_states=cond.embeds.to(latents.device, dtype),
            pooled_projections=cond.require_pooled(self.name).to(latents.device, dtype),
            timestep=t.to(latents.device, dtype),
            img_ids=_image_ids(h, w, latents.device, dtype),
            txt_ids=torch.zeros(cond.embeds.shape[1], 3, device=latents.device, dtype=dtype),
            guidance=g,
            return_dict=False,
        )[0]
        return unpack_latents(out.float(), h, w)

    def build_tiny(self, hidden_size: int = 32, num_layers: int = 1, num_heads: int = 2, latent_channels: int = 4,
                   text_dim: int = 32, pooled_dim: int = 32, guidance_embeds: bool = True, num_single_layers: int = 1):
        from diffusers import FluxTransformer2DModel

        head_dim = hidden_size // num_heads
        if head_dim * num_heads != hidden_size or head_dim % 4:
            raise ValueError(
                f"tiny flux: hidden_size {hidden_size} must split into {num_heads} heads of a size divisible by 4 "
                "(the 3-axis RoPE needs it)."
            )
        rope = (head_dim // 4, head_dim // 4, head_dim - 2 * (head_dim // 4))
        return FluxTransformer2DModel(
            patch_size=1, in_channels=4 * latent_channels, num_layers=num_layers,
            num_single_layers=num_single_layers, attention_head_dim=head_dim, num_attention_heads=num_heads,
            joint_attention_dim=text_dim, pooled_projection_dim=pooled_dim, guidance_embeds=guidance_embeds,
            axes_dims_rope=rope,
        )

    def load(self, name_or_path, subfolder="transformer", torch_dtype=None, **options):
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel.from_pretrained(name_or_path, subfolder=subfolder, torch_dtype=torch_dtype,
                                                      **options)


class SD3Adapter(FlowAdapter):
    """``SD3Transformer2DModel`` (SD3 / SD3.5): unpacked latents, timestep = 1000·t, no CFG during rollouts."""

    name = "sd3"

    def latent_channels(self, model: Any) -> int:
        return _unwrap(model).config.in_channels

    def velocity(self, model, latents, t, cond, guidance=3.5):
        self.check_inputs(latents, t, cond)
        dtype = _unwrap(model).dtype
        out = model(
            hidden_states=latents.to(dtype),
            encoder_hidden_states=cond.embeds.to(latents.device, dtype),
            pooled_projections=cond.require_pooled(self.name).to(latents.device, dtype),
            timestep=(1000 * t).to(latents.device, dtype),
            return_dict=False,
        )[0]
        return out.float()

    def build_tiny(self, hidden_size: int = 32, num_layers: int = 1, num_heads: int = 4, latent_channels: int = 4,
                   text_dim: int = 32, pooled_dim: int = 32, sample_size: int = 8):
        from diffusers import SD3Transformer2DModel

        if hidden_size % num_heads:
            raise ValueError(f"tiny sd3: hidden_size {hidden_size} must be divisible by num_heads {num_heads}.")
        return SD3Transformer2DModel(
            sample_size=sample_size, patch_size=2, in_channels=latent_channels, num_layers=num_layers,
            attention_head_dim=hidden_size // num_heads, num_attention_heads=num_heads, joint_attention_dim=text_dim,
            caption_projection_dim=hidden_size, pooled_projection_dim=pooled_dim, out_channels=latent_channels,
            pos_embed_max_size=max(sample_size, 16),
        )

    def load(self, name_or_path, subfolder="transformer", torch_dtype=None, **options):
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel.from_pretrained(name_or_path, subfolder=subfolder, torch_dtype=torch_dtype,
                                                     **options)


_ADAPTERS: dict[str, FlowAdapter] = {}


def register_flow_adapter(adapter: FlowAdapter, *, overwrite: bool = False) -> FlowAdapter:
    """Register an adapter instance under ``adapter.name``; a taken name raises unless ``overwrite=True``."""
    if not adapter.name:
        raise ValueError(f"{type(adapter).__name__} has no `name`; set the class attribute before registering.")
    if adapter.name in _ADAPTERS and not overwrite:
        raise ValueError(f"flow adapter {adapter.name!r} is already registered; pass overwrite=True to replace it.")
    _ADAPTERS[adapter.name] = adapter
    return adapter


# Built-in adapters defined in other modules (heavier imports), registered when first asked for.
_BUILTIN_MODULES = {"qwen_image_edit": "rlpost.models.flow_edit"}


def get_flow_adapter(name: str) -> FlowAdapter:
    """The adapter registered as ``name`` (``"flux"``, ``"sd3"``, ``"qwen_image_edit"``, ...)."""
    if name not in _ADAPTERS and name in _BUILTIN_MODULES:
        import importlib

        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _ADAPTERS:
        raise ValueError(f"Unknown flow adapter {name!r}. Registered: {', '.join(list_flow_adapters())}.")
    return _ADAPTERS[name]


def list_flow_adapters() -> list[str]:
    return sorted(set(_ADAPTERS) | set(_BUILTIN_MODULES))


register_flow_adapter(FluxAdapter())
register_flow_adapter(SD3Adapter())


# ----------------------------------------------------------------------------- builders


def tiny_flow_transformer(kind: str = "flux", seed: int = 0, **options: Any) -> Any:
    """A tiny random-init flow transformer for tests, recipes and the CPU demo (no download).

    Args:
        kind: adapter name, ``"flux"`` or ``"sd3"``.
        seed: torch seed for the initialisation (the global RNG state is restored afterwards).
        **options: the adapter's ``build_tiny`` options: ``hidden_size`` (32), ``num_layers`` (1), ``num_heads``,
            ``latent_channels`` (4), ``text_dim`` (32), ``pooled_dim`` (32), and ``guidance_embeds`` (flux) or
            ``sample_size`` (sd3, the latent size).
    """
    adapter = get_flow_adapter(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return adapter.build_tiny(**options)


def tiny_autoencoder(latent_channels: int = 4, seed: int = 0) -> Any:
    """A tiny random ``AutoencoderKL`` (one down block, 8 channels) for decoder tests; 1× spatial factor."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), layers_per_block=1,
            latent_channels=latent_channels, norm_num_groups=4, sample_size=8,
        )


def load_flow_transformer(name_or_path: str, kind: str = "flux", seed: int = 0, torch_dtype: Any = None,
                          **options: Any) -> Any:
    """``tiny:flux`` / ``tiny:sd3`` build a tiny random model (``options`` → :func:`tiny_flow_transformer`); anything
    else is a local folder or hub id loaded with the adapter's ``from_pretrained`` (``subfolder="transformer"``)."""
    if name_or_path.startswith("tiny:"):
        return tiny_flow_transformer(name_or_path.split(":", 1)[1], seed=seed, **options)
    if isinstance(torch_dtype, str):
        torch_dtype = getattr(torch, torch_dtype)
    return get_flow_adapter(kind).load(name_or_path, torch_dtype=torch_dtype, **options)


