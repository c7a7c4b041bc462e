"""Image-editing flow models: the Qwen-Image-Edit adapter, a tiny CPU editor, its conditioning and a warm start.

ThinkRL-Edit (arXiv 2601.03467; ``specs/thinkrl-edit.md`` §3.2) trains a LoRA on Qwen-Image-Edit's MMDiT
(``diffusers.QwenImageTransformer2DModel``). The editing pipeline (diffusers 0.42 ``QwenImageEditPipeline.__call__``)
calls the transformer with

- ``hidden_states = cat([noisy latent tokens, source-image latent tokens], dim=1)``, both packed into 2×2 patches
  (``_pack_latents``: [B, C, H, W] → [B, (H/2)(W/2), 4C]);
- ``img_shapes = [[(1, H/2, W/2), (1, Hs/2, Ws/2)]] * B``: both token grids, so the second one gets RoPE frame index 1;
- ``timestep = t / 1000`` for scheduler timesteps t ∈ [0, 1000], i.e. the flow time σ ∈ [0, 1] (the model's
  ``Timesteps`` projection multiplies by 1000 again), one per sample;
- ``encoder_hidden_states`` (Qwen2.5-VL hidden states of the instruction *and* the source image) and
  ``encoder_hidden_states_mask`` (padding mask; the pipeline passes None when every token is valid);
- and keeps ``noise_pred[:, :L]``, the noisy-token part of the output.

:class:`QwenImageEditAdapter` (registered as ``"qwen_image_edit"``) does exactly that behind rlpost's one adapter
signature ``v = adapter.velocity(model, latents[B, C, H, W], t[B], cond)``, with the source latents taken from
``cond.image_latents`` and the text padding mask from ``cond.text_mask`` (Qwen-Image has no pooled text projection:
``cond.pooled`` is None). Guidance embeddings are not passed
(Qwen-Image-Edit has ``guidance_embeds=False``; diffusers 0.42's guidance branch does not run).

Tiny CPU editor (tests, the shapes env, the CPU recipe):

- :meth:`QwenImageEditAdapter.build_tiny`: a random-init ``QwenImageTransformer2DModel`` (2 layers, hidden 64).
- :class:`WordPromptEncoder`: each word → a fixed random vector seeded from the word, plus a fixed random vector per
  position. An unseen instruction made of seen words gets a meaningful embedding, which a per-string random embedding
  (:class:`rlpost.models.flow.RandomPromptEncoder`) cannot give, so held-out instructions can generalize.
- :class:`PixelCodec`: pixel-space "latents" ``x = 2·img − 1`` (a fixed invertible affine map), encoder and decoder.

Paper scale: :class:`QwenEditPromptEncoder` (the pipeline's own Qwen2.5-VL on instruction + source image; it takes
whole prompt records, see ``takes_records``) and :class:`QwenImageVAECodec` (the pipeline's ``AutoencoderKLQwenImage``
with its ``latents_mean`` / ``latents_std`` normalization).

:func:`pretrain_editor` is a plain supervised flow-matching warm start on (source, instruction, target) triples.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from rlpost.models.flow import (
    FlowAdapter,
    PromptEmbeds,
    _unwrap,
    get_flow_adapter,
    pack_latents,
    register_flow_adapter,
    unpack_latents,
)

__all__ = [
    "PixelCodec",
    "QwenEditPromptEncoder",
    "QwenImageEditAdapter",
    "QwenImageVAECodec",
    "WordPromptEncoder",
    "pretrain_editor",
    "tokenize_words",
]


# ----------------------------------------------------------------------------- the adapter


class QwenImageEditAdapter(FlowAdapter):
    """``QwenImageTransformer2DModel`` called as ``QwenImageEditPipeline`` calls it (see the module docstring).

    ``cond.image_latents`` [B, C, Hs, Ws] (the source image in latent space) is required; ``cond.text_mask`` [B, S] (or
    None: no padding) is the text padding mask. Per-sample ``t`` works because the model embeds one timestep per batch row.
    """

    name = "qwen_image_edit"

    def latent_channels(self, model: Any) -> int:
        return _unwrap(model).config.in_channels // 4

    def velocity(self, model, latents, t, cond, guidance=3.5):
        self.check_inputs(latents, t, cond)
        if cond.image_latents is None:
            raise ValueError("qwen_image_edit needs the source image: cond.image_latents is None. Give the trainer "
                             "prompt records with a `source_image` and an `image_encoder` (PixelCodec for tiny models, "
                             "QwenImageVAECodec for the real VAE).")
        b, c, h, w = latents.shape
        source = cond.image_latents.to(latents.device)
        if source.shape[1] != c:
            raise ValueError(f"qwen_image_edit: source latents have {source.shape[1]} channels but the noisy latents "
                             f"{c}; encode the source image with the same codec as the latents.")
        hs, ws = source.shape[-2:]
        inner = _unwrap(model)
        dtype = inner.dtype
        noisy = pack_latents(latents)  # [B, L, 4C]; Qwen's _pack_latents is the same 2x2 packing as FLUX's
        tokens = torch.cat([noisy, pack_latents(source)], dim=1).to(dtype)  # [B, L + Ls, 4C]
        mask = None if cond.text_mask is None else cond.text_mask.to(latents.device)
        out = model(
            hidden_states=tokens,
            encoder_hidden_states=cond.embeds.to(latents.device, dtype),
            encoder_hidden_states_mask=None if mask is None or bool(mask.all()) else mask,  # the pipeline drops an all-ones mask
            timestep=t.to(latents.device, dtype),  # = scheduler timestep / 1000, as the pipeline passes it
            img_shapes=[[(1, h // 2, w // 2), (1, hs // 2, ws // 2)]] * b,
            return_dict=False,
        )[0]
        return unpack_latents(out[:, : noisy.shape[1]].float(), h, w)  # keep the noisy-token part only

    def build_tiny(self, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2, latent_channels: int = 3,
                   text_dim: int = 32, zero_cond_t: bool = False):
        """A random-init ``QwenImageTransformer2DModel`` small enough for CPU RL (~120k parameters by default).

        ``latent_channels`` is C of the unpacked latents (3 for :class:`PixelCodec`); the model sees 4C per packed
        token and predicts C per latent cell, like the real model (in 64 = 4·16, out 16). ``text_dim`` must equal the
        prompt encoder's ``dim``.
        """
        from diffusers import QwenImageTransformer2DModel

        head_dim = hidden_size // num_heads
        if head_dim * num_heads != hidden_size or head_dim % 8:
            raise ValueError(f"tiny qwen_image_edit: hidden_size {hidden_size} must split into {num_heads} heads of a "
                             "size divisible by 8 (three even RoPE axes).")
        side = 2 * (3 * head_dim // 16)  # even RoPE axes (frame, height, width) summing to head_dim
        rope = (head_dim - 2 * side, side, side)
        return QwenImageTransformer2DModel(
            patch_size=2, in_channels=4 * latent_channels, out_channels=latent_channels, num_layers=num_layers,
            attention_head_dim=head_dim, num_attention_heads=num_heads, joint_attention_dim=text_dim,
            axes_dims_rope=rope, zero_cond_t=zero_cond_t,
        )

    def load(self, name_or_path, subfolder="transformer", torch_dtype=None, **options):
        from diffusers import QwenImageTransformer2DModel

        return QwenImageTransformer2DModel.from_pretrained(name_or_path, subfolder=subfolder,
                                                           torch_dtype=torch_dtype, **options)


register_flow_adapter(QwenImageEditAdapter(), overwrite=True)  # overwrite: idempotent under module reloads


# ----------------------------------------------------------------------------- conditioning


_WORD = re.compile(r"[a-z]+|\d+")


def tokenize_words(text: str) -> list[str]:
    """Lower-cased words and digit runs; punctuation is dropped (``"row 1, column 2"`` → row 1 column 2)."""
    return _WORD.findall(text.lower())


def _seeded(key: str, seed: int, *shape: int) -> Tensor:
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
    return torch.randn(*shape, generator=g)


class WordPromptEncoder:
    """Word-level embeddings for tiny models: ``e_k = word(w_k) + 0.5·pos(k)``, padded to ``max_words``.

    ``word(w)`` is a fixed N(0, 1) vector seeded from the word (blake2b, same in every process) and ``pos(k)`` one per
    position. Instructions share vectors for the words they share, so a held-out instruction ("recolour ... row 2
    ... red") is a new combination of known parts; what the words mean is still learned by the model. The padding
    mask goes to ``PromptEmbeds.text_mask`` ([B, max_words], True = word), which :class:`QwenImageEditAdapter` reads.

    Args:
        dim: D, the transformer's ``joint_attention_dim``.
        max_words: S; a longer instruction raises (raise ``max_words``), it is never silently cut.
        seed: mixes into every word's seed.
    """

    def __init__(self, dim: int = 32, max_words: int = 24, seed: int = 0) -> None:
        self.dim, self.max_words, self.seed = dim, max_words, seed
        self._positions = torch.stack([_seeded(f"<pos {k}>", seed, dim) for k in range(max_words)])  # [S, D]
        self._words: dict[str, Tensor] = {}

    def _word(self, word: str) -> Tensor:
        if word not in self._words:
            self._words[word] = _seeded(word, self.seed, self.dim)
        return self._words[word]

    def __call__(self, prompts: Sequence[str]) -> PromptEmbeds:
        embeds = torch.zeros(len(prompts), self.max_words, self.dim)
        mask = torch.zeros(len(prompts), self.max_words)
        for i, prompt in enumerate(prompts):
            words = tokenize_words(prompt) or ["<empty>"]
            if len(words) > self.max_words:
                raise ValueError(f"WordPromptEncoder: {len(words)} words in {prompt[:60]!r} exceed max_words="
                                 f"{self.max_words}; build the encoder with a larger max_words.")
            for k, word in enumerate(words):
                embeds[i, k] = self._word(word) + 0.5 * self._positions[k]
            mask[i, : len(words)] = 1.0
        return PromptEmbeds(embeds, text_mask=mask)


class QwenEditPromptEncoder:
    """Qwen-Image-Edit's own text encoder: Qwen2.5-VL reads the instruction **and** the source image.

    Calls ``QwenImageEditPipeline.encode_prompt(prompt, image=<source PIL image>)`` per record (load the pipeline with
    ``transformer=None, vae=None`` to keep only the encoder), pads the hidden states of a batch to one length and
    returns the mask in ``text_mask``. Because the embedding depends on the source image, it takes whole prompt records
    (``takes_records = True``; ``FlowGRPOTrainer.encode`` honours it). The source image is resized as the pipeline
    resizes its ``prompt_image`` (area ``condition_area``, aspect kept, multiples of 32). Results are cached per
    (instruction, source pixels), computed without gradients.
    """

    takes_records = True

    def __init__(self, pipeline: Any, condition_area: int = 384 * 384, cache: bool = True) -> None:
        self.pipeline, self.condition_area = pipeline, condition_area
        self._cache: dict[str, tuple[Tensor, Tensor]] | None = {} if cache else None

    def _pil(self, image: Any):
        from PIL import Image

        from rlpost.rewards.image import to_image_tensor

        x = to_image_tensor(image)
        _, h, w = x.shape
        scale = math.sqrt(self.condition_area / (h * w))
        size = (max(32, round(w * scale / 32) * 32), max(32, round(h * scale / 32) * 32))
        pixels = (x * 255).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(pixels).resize(size, Image.BICUBIC)

    @torch.no_grad()
    def _encode(self, record: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        source = record.get("source_image")
        image = None if source is None else self._pil(source)
        embeds, mask = self.pipeline.encode_prompt(prompt=[record["prompt"]], image=image)
        mask = torch.ones(embeds.shape[:2]) if mask is None else mask.float()
        return embeds[0].float().cpu(), mask[0].cpu()

    def __call__(self, records: Sequence[Mapping[str, Any] | str]) -> PromptEmbeds:
        pairs = []
        for record in records:
            record = {"prompt": record} if isinstance(record, str) else record
            key = f"{record['prompt']}\x00{_pixels_key(record.get('source_image'))}"
            if self._cache is not None and key in self._cache:
                pairs.append(self._cache[key])
                continue
            pair = self._encode(record)
            if self._cache is not None:
                self._cache[key] = pair
            pairs.append(pair)
        return _pad_pairs(pairs)


def _pixels_key(image: Any) -> str:
    if image is None:
        return ""
    x = torch.as_tensor(image) if not hasattr(image, "convert") else image
    data = x.detach().cpu().contiguous().numpy().tobytes() if isinstance(x, Tensor) else x.tobytes()
    return hashlib.sha256(data).hexdigest()


def _pad_pairs(pairs: Sequence[tuple[Tensor, Tensor]]) -> PromptEmbeds:
    """Stack per-prompt (embeds [S_i, D], mask [S_i]) into PromptEmbeds [B, S_max, D] and its ``text_mask``."""
    length = max(e.shape[0] for e, _ in pairs)
    embeds = torch.zeros(len(pairs), length, pairs[0][0].shape[1])
    mask = torch.zeros(len(pairs), length)
    for i, (e, m) in enumerate(pairs):
        embeds[i, : e.shape[0]], mask[i, : m.shape[0]] = e, m
    return PromptEmbeds(embeds, text_mask=mask)


# ----------------------------------------------------------------------------- codecs


class PixelCodec:
    """Pixel-space latents for tiny editors: ``encode(img) = 2·img − 1``, ``decode(x) = clamp((x + 1)/2, 0, 1)``.

    A fixed invertible affine map, so the decoded image *is* the sample (what a pixel judge reads) and a source image
    enters the model unchanged. ``encode`` takes [B, 3, H, W] in [0, 1] (the trainer's ``image_encoder``), ``decode``
    [B, 3, H, W] latents (its ``decoder``).
    """

    channels = 3

    @staticmethod
    def encode(images: Tensor) -> Tensor:
        return images.float() * 2 - 1

    @staticmethod
    @torch.no_grad()
    def decode(latents: Tensor) -> Tensor:
        return ((latents.float() + 1) / 2).clamp(0, 1).cpu()


class QwenImageVAECodec:
    """Qwen-Image's ``AutoencoderKLQwenImage`` as the editing pipeline uses it, on single-frame [B, C, H, W] latents.

    ``encode``: images in [0, 1] → [-1, 1] → ``vae.encode`` on one frame → the posterior mode (the pipeline's
    ``sample_mode="argmax"``) → ``(z − latents_mean) / latents_std``. ``decode``: the inverse normalization, then
    ``vae.decode`` and back to [0, 1]. Chunks of ``batch_size`` keep memory flat.
    """

    def __init__(self, vae: Any, batch_size: int = 4) -> None:
        self.vae, self.batch_size = vae, batch_size
        cfg = vae.config
        self.mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1)
        self.std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1)

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        out = []
        for chunk in images.split(self.batch_size):
            x = (chunk.to(self._dtype) * 2 - 1).unsqueeze(2)  # [b, 3, 1, H, W]: one video frame
            z = self.vae.encode(x).latent_dist.mode()[:, :, 0].float()  # [b, C, h, w]
            out.append((z - self.mean.to(z.device)) / self.std.to(z.device))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        out = []
        for chunk in latents.split(self.batch_size):
            z = chunk.float() * self.std.to(chunk.device) + self.mean.to(chunk.device)
            image = self.vae.decode(z.to(self._dtype).unsqueeze(2), return_dict=False)[0][:, :, 0]
            out.append(((image.float() + 1) / 2).clamp(0, 1).cpu())
        return torch.cat(out)


# ----------------------------------------------------------------------------- supervised warm start


def pretrain_editor(model: torch.nn.Module, records: Sequence[Mapping[str, Any]], prompt_encoder: Any,
                    codec: Any = PixelCodec, *, steps: int = 200, batch_size: int = 32, learning_rate: float = 1e-3,
                    seed: int = 0, adapter: str | FlowAdapter = "qwen_image_edit", target_field: str = "target_image",
                    time_sampling: str = "uniform") -> list[float]:
    """Supervised rectified-flow training on ``(source_image, prompt) → target_image`` records; returns the losses.

    Loss (rectified flow, the objective the flow editors were pre-trained with; E-GRPO spec §1.1 conventions):
    ``x_t = (1 − t)·x_0 + t·ε``, ``L = ‖v_θ(x_t, t, c) − (ε − x_0)‖²`` with t ~ U(0, 1) (``"uniform"``) or
    σ(N(0, 1)) (``"logit_normal"``, SD3's choice). Kept deliberately plain (AdamW, constant lr, fresh noise each step)
    so that RL afterwards has room to improve a short warm start. The global RNG is not touched.
    """
    adapter = get_flow_adapter(adapter) if isinstance(adapter, str) else adapter
    if not records:
        raise ValueError("pretrain_editor needs records with `prompt`, `source_image` and `target_image`.")
    missing = [k for k in ("prompt", "source_image", target_field) if k not in records[0]]
    if missing:
        raise ValueError(f"pretrain_editor: records lack {missing}; each needs prompt, source_image and "
                         f"{target_field}.")
    if time_sampling not in ("uniform", "logit_normal"):
        raise ValueError(f"time_sampling must be 'uniform' or 'logit_normal', got {time_sampling!r}.")
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    sources = codec.encode(torch.stack([torch.as_tensor(r["source_image"]).float() for r in records]))
    targets = codec.encode(torch.stack([torch.as_tensor(r[target_field]).float() for r in records]))
    cond_all = prompt_encoder([r["prompt"] for r in records])
    cond_all.image_latents = sources
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(records), (batch_size,), generator=g)
        x0 = targets[rows].to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        z = torch.randn(batch_size, generator=g) if time_sampling == "logit_normal" else None
        t = (torch.sigmoid(z) if z is not None else torch.rand(batch_size, generator=g)).to(device)
        xt = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * noise
        v = adapter.velocity(model, xt, t, cond_all.index(rows).to(device))
        loss = ((v - (noise - x0)) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses
