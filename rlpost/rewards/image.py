"""Image rewards as reward modules: offline targets for tests and demos, and the learned scorers E-GRPO trains on.

Every module reads the batch field ``image`` (one image per sample: a float tensor ``[3, H, W]`` or ``[H, W, 3]`` in
[0, 1], a uint8 array, or a PIL image; see :func:`to_image_tensor`) and, where it says so, ``prompt``. A ``None`` image
scores ``None`` (not applicable).

Offline, no weights (a real learning signal for tiny models on CPU):

- ``image_target``: −mean squared distance to a target colour or target image.
- ``prompt_color``: −mean squared distance to the colour named in the prompt ("a red square" → (1, 0, 0)); ``None``
  when the prompt names no known colour. Prompt-conditional, so a policy has to use its conditioning.

Learned, loaded by local path or hub id when the user has the weights (E-GRPO spec §1.6):

- ``clip_score``: cosine similarity of CLIP image and text embeddings (transformers ``CLIPModel``), times ``scale``.
  E-GRPO's CLIP reward is the raw cosine (``scale=1``, the default); CLIPScore (Hessel et al. 2021) is
  ``2.5·max(cos, 0)`` (``scale=2.5, clamp_min=0``).
- ``pickscore``: PickScore (Kirstain et al. 2023) = ``exp(logit_scale)·cos`` from ``yuvalkirstain/PickScore_v1``
  (a CLIP-H checkpoint; the processor is ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``).
- ``hpsv2``: HPSv2.1 (Wu et al. 2023) = ``img_feat·txt_feat`` (normalized) of an open_clip ViT-H-14 with the
  ``HPS_v2.1_compressed.pt`` weights. Needs the ``open_clip_torch`` package.
- ``image_reward``: ImageReward (Xu et al. 2023) through the ``image-reward`` package's ``RM.load(path)``.

E-GRPO's joint reward 0.7·HPS + 0.3·CLIP is ``WeightedSum([hpsv2, clip_score], [0.7, 0.3])`` (or two recipe rewards
with those weights).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rlpost.rewards.base import RewardModule, RewardOutput
from rlpost.rewards.registry import register_reward

__all__ = [
    "COLORS",
    "ClipScore",
    "HPSv2",
    "ImageRewardScore",
    "ImageTarget",
    "PickScore",
    "PromptColor",
    "to_image_tensor",
]

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
    "gray": (0.5, 0.5, 0.5),
}
"""Colour words ``prompt_color`` recognises, as RGB in [0, 1]."""

# OpenAI CLIP normalisation, used when a checkpoint ships no preprocessor config.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_image_tensor(image: Any) -> Tensor:
    """Any common image form as a float32 tensor ``[3, H, W]`` in [0, 1].

    Accepts torch tensors or numpy arrays shaped ``[3, H, W]`` (channels first), ``[H, W, 3]`` or ``[H, W]``
    (grayscale), as floats in [0, 1] or uint8 in [0, 255], and PIL images. Floats are clamped to [0, 1].
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        import numpy as np

        image = np.array(image.convert("RGB"))  # a copy: PIL buffers are read-only
    x = torch.as_tensor(image)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.ndim == 2:
        x = x.unsqueeze(0).expand(3, -1, -1)
    elif x.ndim == 3 and x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(2, 0, 1)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(
            f"image must be [3, H, W], [H, W, 3] or [H, W] (tensor, array or PIL image), got shape {tuple(x.shape)}."
        )
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return x.clamp(0.0, 1.0)


def _mse_to(image: Tensor, target: Tensor) -> float:
    """Mean squared distance of ``image [3, H, W]`` to ``target`` ([3] colour or [3, h, w] image, resized)."""
    if target.ndim == 1:
        target = target[:, None, None]
    elif target.shape[-2:] != image.shape[-2:]:
        target = F.interpolate(target[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
    return float(((image - target) ** 2).mean())


# ----------------------------------------------------------------------------- offline rewards


@register_reward("image_target")
class ImageTarget(RewardModule):
    """−mean((image − target)²): 0 for a perfect match, down to −1 for the opposite colour everywhere.

    Args:
        target_color: RGB in [0, 1] (default mid-orange (1.0, 0.5, 0.0)); ignored when ``target_image`` is given.
        target_image: an image (any form :func:`to_image_tensor` takes, or a file path), bilinearly resized to each
            scored image's size.
        **options: ``name``, ``field_map``, ... of :class:`RewardModule`.
    """

    description = "Offline: -MSE between the image and a target colour or target image (no weights)."
    requires = ("image",)

    def __init__(self, target_color: Sequence[float] = (1.0, 0.5, 0.0), target_image: Any = None, **options: Any):
        if target_image is not None:
            if isinstance(target_image, str):
                from PIL import Image

                target_image = Image.open(target_image)
            self.target = to_image_tensor(target_image)
        else:
            if len(target_color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in target_color):
                raise ValueError(f"target_color must be 3 values in [0, 1] (RGB), got {list(target_color)}.")
            self.target = torch.tensor([float(c) for c in target_color])
        super().__init__(**options)

    def score_one(self, sample: dict[str, Any]) -> float | None:
        if sample["image"] is None:
            return None
        return -_mse_to(to_image_tensor(sample["image"]), self.target)


@register_reward("prompt_color")
class PromptColor(RewardModule):
    """−mean((image − colour)²) for the first colour word of the prompt (see :data:`COLORS`); None without one.

    Words match whole and case-insensitively ("Red" and "red," count, "reddish" does not).
    """

    description = "Offline: -MSE between the image and the colour named in the prompt (None if no colour word)."
    requires = ("image", "prompt")

    def __init__(self, colors: dict[str, Sequence[float]] | None = None, **options: Any):
        table = COLORS if colors is None else colors
        self.colors = {name.lower(): torch.tensor([float(c) for c in rgb]) for name, rgb in table.items()}
        self._pattern = re.compile(r"\b(" + "|".join(map(re.escape, self.colors)) + r")\b", re.IGNORECASE)
        super().__init__(**options)

    def color_of(self, prompt: str) -> Tensor | None:
        match = self._pattern.search(prompt or "")
        return self.colors[match.group(1).lower()] if match else None

    def score_one(self, sample: dict[str, Any]) -> float | None:
        target = self.color_of(sample["prompt"])
        if target is None or sample["image"] is None:
            return None
        return -_mse_to(to_image_tensor(sample["image"]), target)


# ----------------------------------------------------------------------------- learned rewards


def _clip_pixels(images: list[Tensor], size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """CLIP preprocessing in torch: shortest side → ``size`` (bicubic, antialiased), center crop, normalize."""
    out = []
    for img in images:
        h, w = img.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(img[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)[0]
        top, left = (nh - size) // 2, (nw - size) // 2
        out.append(x[:, top : top + size, left : left + size].clamp(0, 1))
    pixels = torch.stack(out)
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class ClipScore(RewardModule):
    """``scale · max(cos(CLIP_img(image), CLIP_txt(prompt)), clamp_min)`` with a transformers ``CLIPModel``.

    Args:
        model_name_or_path: local folder or hub id of a ``CLIPModel`` (e.g. ``openai/clip-vit-large-patch14``).
        tokenizer_name_or_path: where the tokenizer lives, if not beside the model.
        scale: multiplier (1.0 = E-GRPO's raw cosine; 2.5 = CLIPScore's w).
        clamp_min: lower clamp on the cosine (None = none; CLIPScore uses 0).
        batch_size: images per forward pass.
        device: "cpu", "cuda", ... (default: cuda when available).
        torch_dtype: e.g. "float16" on GPU.
    """

    description = "CLIP image-text cosine similarity (transformers CLIPModel by local path or hub id)."
    requires = ("image", "prompt")
    granularity = "pointwise"
    _use_logit_scale = False

    def __init__(self, model_name_or_path: str, tokenizer_name_or_path: str | None = None, scale: float = 1.0,
                 clamp_min: float | None = None, batch_size: int = 16, device: str | None = None,
                 torch_dtype: str | None = None, **options: Any):
        from transformers import AutoTokenizer, CLIPModel

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
        self.model = CLIPModel.from_pretrained(model_name_or_path, torch_dtype=dtype).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path or model_name_or_path)
        self.mean, self.std = _CLIP_MEAN, _CLIP_STD
        try:  # prefer the checkpoint's own normalisation (laion / PickScore ship one)
            from transformers import CLIPImageProcessor

            processor = CLIPImageProcessor.from_pretrained(model_name_or_path)
            self.mean, self.std = tuple(processor.image_mean), tuple(processor.image_std)
        except (OSError, ValueError):
            pass
        self.image_size = self.model.config.vision_config.image_size
        self.max_length = self.model.config.text_config.max_position_embeddings
        self.scale, self.clamp_min, self.batch_size = float(scale), clamp_min, batch_size
        super().__init__(**options)

    @torch.no_grad()
    def _similarity(self, images: list[Tensor], prompts: list[str]) -> Tensor:
        pixels = _clip_pixels(images, self.image_size, self.mean, self.std).to(self.device, self.model.dtype)
        text = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt").to(self.device)
        img = self.model.get_image_features(pixel_values=pixels)
        txt = self.model.get_text_features(input_ids=text["input_ids"], attention_mask=text.get("attention_mask"))
        img, txt = (getattr(o, "pooler_output", o) for o in (img, txt))  # transformers 5 may return an output object
        cos = (F.normalize(img.float(), dim=-1) * F.normalize(txt.float(), dim=-1)).sum(-1)
        if self._use_logit_scale:
            cos = cos * self.model.logit_scale.exp().float()
        return cos

    def score_batch(self, batch: dict[str, list], group_ids: list[int]) -> RewardOutput:
        scores: list[float | None] = [None] * len(group_ids)
        rows = [i for i, image in enumerate(batch["image"]) if image is not None]
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            sim = self._similarity([to_image_tensor(batch["image"][i]) for i in chunk],
                                   [batch["prompt"][i] for i in chunk])
            if self.clamp_min is not None:
                sim = sim.clamp(min=self.clamp_min)
            for i, value in zip(chunk, (self.scale * sim).tolist()):
                scores[i] = value
        return RewardOutput(scores)


register_reward("clip_score")(ClipScore)


@register_reward("pickscore")
class PickScore(ClipScore):
    """PickScore: ``exp(logit_scale) · cos`` of a CLIP-H fine-tuned on Pick-a-Pic (Kirstain et al. 2023).

    ``model_name_or_path="yuvalkirstain/PickScore_v1"``, ``tokenizer_name_or_path`` its processor
    (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``).
    """

    description = "PickScore (CLIP-H preference model; load by local path or hub id)."
    _use_logit_scale = True


@register_reward("hpsv2")
class HPSv2(RewardModule):
    """HPSv2.1 (Wu et al. 2023): ``normalize(img_feat) · normalize(txt_feat)`` of open_clip ViT-H-14 + HPS weights.

    As E-GRPO / VisualGRPO score it (spec §1.6: ``diag(img_feat·txt_feat)``). Requires ``pip install open_clip_torch``
    and the checkpoint file (``HPS_v2.1_compressed.pt`` from the HPSv2 release).

    Args:
        checkpoint_path: path of the HPS checkpoint (a ``{"state_dict": ...}`` or a bare state dict).
        architecture: open_clip model name (``ViT-H-14``).
        batch_size, device: as for :class:`ClipScore`.
    """

    description = "HPSv2.1 human-preference score (open_clip ViT-H-14 + HPS checkpoint by path)."
    requires = ("image", "prompt")

    def __init__(self, checkpoint_path: str, architecture: str = "ViT-H-14", batch_size: int = 16,
                 device: str | None = None, **options: Any):
        try:
            import open_clip
        except ImportError as error:
            raise ImportError(
                "reward 'hpsv2' needs open_clip: pip install open_clip_torch (and download HPS_v2.1_compressed.pt)."
            ) from error
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, _, preprocess = open_clip.create_model_and_transforms(architecture, pretrained=None)
        state = torch.load(checkpoint_path, map_location="cpu")
        model.load_state_dict(state.get("state_dict", state))
        self.model = model.to(self.device).eval()
        self.tokenizer = open_clip.get_tokenizer(architecture)
        self.image_size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) \
            else model.visual.image_size
        self.batch_size = batch_size
        super().__init__(**options)

    @torch.no_grad()
    def score_batch(self, batch: dict[str, list], group_ids: list[int]) -> RewardOutput:
        scores: list[float | None] = [None] * len(group_ids)
        rows = [i for i, image in enumerate(batch["image"]) if image is not None]
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            pixels = _clip_pixels([to_image_tensor(batch["image"][i]) for i in chunk], self.image_size,
                                  _CLIP_MEAN, _CLIP_STD).to(self.device)
            text = self.tokenizer([batch["prompt"][i] for i in chunk]).to(self.device)
            img = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
            txt = F.normalize(self.model.encode_text(text).float(), dim=-1)
            for i, value in zip(chunk, (img * txt).sum(-1).tolist()):
                scores[i] = value
        return RewardOutput(scores)


@register_reward("image_reward")
class ImageRewardScore(RewardModule):
    """ImageReward (Xu et al. 2023) through the ``image-reward`` package: ``RM.load(path).score(prompt, images)``.

    Args:
        model_name_or_path: a local ``ImageReward.pt`` path (or ``"ImageReward-v1.0"`` to let the package download).
        device: as for :class:`ClipScore`.
    """

    description = "ImageReward preference score (image-reward package; load by path)."
    requires = ("image", "prompt")

    def __init__(self, model_name_or_path: str = "ImageReward-v1.0", device: str | None = None, **options: Any):
        try:
            import ImageReward as RM
        except ImportError as error:
            raise ImportError("reward 'image_reward' needs the image-reward package: pip install image-reward.") \
                from error
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = RM.load(model_name_or_path, device=self.device)
        super().__init__(**options)

    @torch.no_grad()
    def score_one(self, sample: dict[str, Any]) -> float | None:
        if sample["image"] is None:
            return None
        from PIL import Image

        pixels = (to_image_tensor(sample["image"]).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        return float(self.model.score(sample["prompt"], [Image.fromarray(pixels)]))
