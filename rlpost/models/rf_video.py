"""A tiny rectified-flow image-to-video teacher, trained in seconds on synthetic motion: CHORD's Wan 2.2 stand-in on CPU.

Videos are blobs of Gaussians rendered by :mod:`rlpost.envs.chord.render` that move left or right (one prompt per
direction, plus a null prompt for classifier-free guidance). The "VAE" is average pooling, so the latent keeps a
gradient path back to the renderer as a real VAE encoder does. Convention as Wan / SD3: ``tau = 0`` clean,
``z_tau = (1 - tau) z + tau eps``, velocity ``eps - z``. Like Wan's I2V model it sees the first frame of the clean
video (``first_frame``), so it predicts motion *from* a given scene.

``tiny_rf_video_teacher()`` trains (or loads from the rlpost cache) the teacher the tests and ``recipes/chord/tiny.yaml``
use; ``save_pretrained`` / ``from_pretrained`` keep weights in safetensors beside a JSON config.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RFVideoConfig", "TinyRFVideoTeacher", "synthetic_motion_videos", "tiny_rf_video_teacher", "train_rf_teacher"]


@dataclass
class RFVideoConfig:
    prompts: list[str] = field(default_factory=lambda: ["move right", "move left"])
    channels: int = 3
    frames: int = 8
    render_size: int = 16  # the renderer's image size
    pool: int = 2  # "VAE": average pooling by this factor -> latent size render_size / pool
    hidden: int = 24
    blocks: int = 2
    speed: float = 0.08  # displacement per frame in the training videos, in [-1, 1] image units

    @property
    def latent_size(self) -> int:
        return self.render_size // self.pool


def _time_features(tau: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=tau.device) / half)
    angles = (tau[:, None] * 1000.0) * freqs[None]  # timestep input = tau * 1000, as Wan
    return torch.cat([angles.sin(), angles.cos()], 1)


class _Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(4, hidden)
        self.conv = nn.Conv3d(hidden, hidden, 3, padding=1)
        self.film = nn.Linear(hidden, 2 * hidden)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.film(cond)[:, :, None, None, None].chunk(2, 1)
        return x + self.conv(F.silu(self.norm(x) * (1 + scale) + shift))


class TinyRFVideoTeacher(nn.Module):
    """Velocity model ``v(z_tau, tau, prompt, first_frame)`` on latent videos ``[B, C, T, h, w]``.

    Prompt id ``len(config.prompts)`` is the null (unconditional) prompt, used for classifier-free guidance.
    """

    convention = "tau0_clean"

    def __init__(self, config: RFVideoConfig | None = None) -> None:
        super().__init__()
        self.config = config or RFVideoConfig()
        c, h = self.config.channels, self.config.hidden
        self.inp = nn.Conv3d(2 * c + 1, h, 3, padding=1)  # noisy latent + first frame broadcast + first-frame mask
        self.prompt = nn.Embedding(len(self.config.prompts) + 1, h)
        self.time = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h))
        self.blocks = nn.ModuleList(_Block(h) for _ in range(self.config.blocks))
        self.out = nn.Conv3d(h, c, 3, padding=1)

    @property
    def null_prompt(self) -> int:
        return len(self.config.prompts)

    def prompt_id(self, prompt: str) -> int:
        if prompt not in self.config.prompts:
            raise ValueError(f"The tiny teacher knows the prompts {self.config.prompts}, not {prompt!r}.")
        return self.config.prompts.index(prompt)

    def encode(self, video: Tensor) -> Tensor:
        """Rendered video ``[B, C, T, H, W]`` -> latent ``[B, C, T, H/pool, W/pool]`` (differentiable)."""
        return F.avg_pool3d(video, (1, self.config.pool, self.config.pool))

    def forward(self, z_tau: Tensor, tau: Tensor, prompt_ids: Tensor, first_frame: Tensor) -> Tensor:
        b, _, t, hh, ww = z_tau.shape
        first = first_frame[:, :, None].expand(-1, -1, t, -1, -1)
        mask = torch.zeros(b, 1, t, hh, ww, dtype=z_tau.dtype, device=z_tau.device)
        mask[:, :, 0] = 1
        x = self.inp(torch.cat([z_tau, first, mask], 1))
        cond = self.prompt(prompt_ids) + self.time(_time_features(tau, self.config.hidden))
        for block in self.blocks:
            x = block(x, cond)
        return self.out(F.silu(x))

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(asdict(self.config), indent=1))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "TinyRFVideoTeacher":
        from safetensors.torch import load_file

        path = Path(path)
        model = cls(RFVideoConfig(**json.loads((path / "config.json").read_text())))
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.eval()


def blob(center: Tensor, count: int = 12, spread: float = 0.12, generator: torch.Generator | None = None) -> Tensor:
    """``count`` Gaussian means scattered around ``center [3]`` (a small object), ``[count, 3]``."""
    return center + spread * torch.randn(count, 3, generator=generator)


def synthetic_motion_videos(
    n: int, config: RFVideoConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``n`` rendered videos ``[n, C, T, H, W]`` of a blob moving by ``±speed`` per frame in x, and prompt ids ``[n]``
    (0 = "move right", 1 = "move left"). Start positions and colours are random."""
    from rlpost.envs.chord.render import render_video

    ids = torch.randint(len(config.prompts), (n,), generator=generator)
    starts = torch.cat([(torch.rand(n, 2, generator=generator) - 0.5) * 0.6, torch.zeros(n, 1)], 1)
    means = torch.stack([blob(start, generator=generator) for start in starts])  # [n, N, 3]
    direction = 1.0 - 2.0 * (ids == 1).float()  # +1 right, -1 left
    shift = torch.arange(config.frames, dtype=torch.float32)[None, :] * config.speed * direction[:, None]  # [n, T]
    trajectory = means[:, None].repeat(1, config.frames, 1, 1)
    trajectory[..., 0] += shift[..., None]
    colors = torch.rand(n, 1, config.channels, generator=generator).clamp(0.3, 1.0).expand(-1, means.shape[1], -1)
    scales = torch.full(means.shape[:2], 0.08)
    opacities = torch.full(means.shape[:2], 0.8)
    return render_video(trajectory, colors, scales, opacities, config.render_size), ids


def train_rf_teacher(
    config: RFVideoConfig | None = None,
    steps: int = 400,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    null_prompt_prob: float = 0.1,
    dataset_size: int = 512,
    progress: bool = False,
) -> TinyRFVideoTeacher:
    """Rectified-flow training on synthetic motion: ``E |v(z_tau) - (eps - z)|^2`` with ``tau ~ U(0, 1)`` and the
    prompt dropped to the null id with ``null_prompt_prob`` (so CFG has an unconditional branch)."""
    config = config or RFVideoConfig()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyRFVideoTeacher(config)
    videos, ids = synthetic_motion_videos(dataset_size, config, g)
    latents = model.encode(videos)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    bar = range(steps)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc="tiny RF teacher", leave=False)
    for _ in bar:
        pick = torch.randint(dataset_size, (batch_size,), generator=g)
        z, prompt = latents[pick], ids[pick].clone()
        prompt[torch.rand(batch_size, generator=g) < null_prompt_prob] = model.null_prompt
        tau = torch.rand(batch_size, generator=g)
        eps = torch.randn(z.shape, generator=g)
        z_tau = (1 - tau[:, None, None, None, None]) * z + tau[:, None, None, None, None] * eps
        loss = F.mse_loss(model(z_tau, tau, prompt, z[:, :, 0]), eps - z)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval().requires_grad_(False)


def tiny_rf_video_teacher(
    seed: int = 0, steps: int = 400, cache_dir: str | Path | None = None, **config_overrides
) -> TinyRFVideoTeacher:
    """The tiny teacher, trained once per (config, steps, seed) and cached under the rlpost cache (safetensors)."""
    from rlpost.models.factory import _key, default_cache_dir

    config = RFVideoConfig(**config_overrides)
    folder = Path(cache_dir or default_cache_dir()) / f"rf-video-{_key({**asdict(config), 'steps': steps, 'seed': seed})}"
    if (folder / "model.safetensors").exists():
        return TinyRFVideoTeacher.from_pretrained(folder)
    model = train_rf_teacher(config, steps=steps, seed=seed, progress=True)
    model.save_pretrained(folder)
    return model
