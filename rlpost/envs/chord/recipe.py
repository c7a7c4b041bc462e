"""``rlpost train`` for CHORD stages (``trainer: chord``): build the teacher and scene, optimise, write the outputs.

Outputs under the run directory: ``metrics.jsonl`` (one row per iteration, also to wandb), ``frames/iter_*.gif`` and
``video.gif`` (the rendered motion; also logged to wandb as a video), ``tracks.json`` (per-point 3D tracks, see
:func:`rlpost.envs.chord.optimize.export_tracks`) and ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlpost.envs.chord.optimize import ChordConfig, export_tracks, optimize_motion, toy_scene

__all__ = ["check_chord_teacher", "load_chord_teacher", "run_chord_recipe", "run_chord_stage", "save_gif"]


def load_chord_teacher(spec: Any) -> Any:
    """``tiny:rf_video`` trains (or loads from the rlpost cache) the CPU teacher; a folder loads a saved one.

    Paper scale (Wan 2.2 I2V through diffusers) needs an adapter exposing ``encode`` / velocity / prompt ids over
    ``WanImageToVideoPipeline``; it is documented in ``recipes/chord/wan22.yaml`` and not built yet.
    """
    from rlpost.models.rf_video import TinyRFVideoTeacher, tiny_rf_video_teacher

    check_chord_teacher(spec)
    if spec.name_or_path == "tiny:rf_video":
        return tiny_rf_video_teacher(seed=spec.seed)
    return TinyRFVideoTeacher.from_pretrained(spec.name_or_path)


def check_chord_teacher(spec: Any) -> None:
    """Refuse a teacher this build cannot load, before anything is trained or written."""
    name = spec.name_or_path
    if name == "tiny:rf_video" or (Path(name).is_dir() and (Path(name) / "model.safetensors").exists()):
        return
    raise ValueError(
        f"model.name_or_path {name!r}: CHORD stages take 'tiny:rf_video' or a folder saved by "
        "TinyRFVideoTeacher.save_pretrained. A Wan 2.2 teacher adapter is not built yet (see recipes/chord/wan22.yaml)."
    )


def save_gif(video: Tensor, path: str | Path, scale: int = 8, fps: int = 8) -> Path:
    """A video ``[C, T, H, W]`` in [0, 1] as an upscaled GIF."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = (video.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 3, 0)  # [T, H, W, C]
    images = [Image.fromarray(f.numpy()).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST)
              for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def run_chord_stage(recipe: Any, stage: Any, run_dir: Path, wandb_run: Any = None) -> dict[str, Any]:
    """Optimise one CHORD motion as the recipe says; returns the summary (also written to ``summary.json``)."""
    from tqdm.auto import tqdm

    from rlpost.logging import append_metrics

    config = ChordConfig(**stage.args)
    teacher = load_chord_teacher(recipe.model)
    scene = toy_scene(tuple(config.scene_center), config.scene_points, seed=config.seed,
                      size=teacher.config.render_size)
    bar = tqdm(total=config.iterations, desc=f"chord: {config.prompt!r}", leave=True)

    def on_iteration(row: dict, video: Tensor) -> None:
        append_metrics(run_dir, {"stage": "chord", **row})
        if wandb_run is not None:
            wandb_run.log({k: v for k, v in row.items() if k != "iteration"}, step=row["iteration"])
        if config.gif_every and row["iteration"] % config.gif_every == 0:
            save_gif(video[0], run_dir / "frames" / f"iter_{row['iteration']:05d}.gif")
        bar.update(1)
        bar.set_postfix(tau=f"{row['tau']:.2f}", loss=f"{row['loss/rfsds']:.1f}", shift_x=f"{row['shift_x']:+.2f}")

    result = optimize_motion(teacher, scene, config, callback=on_iteration)
    bar.close()
    gif = save_gif(result.video, run_dir / "video.gif")
    tracks = export_tracks(result, run_dir / "tracks.json")
    if wandb_run is not None:
        import wandb

        wandb_run.log({"video": wandb.Video(str(gif), format="gif")})
    shift = result.centroid_shift().tolist()
    summary = {"prompt": config.prompt, "iterations": config.iterations, "centroid_shift": shift,
               "video": str(gif), "tracks": str(tracks)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def run_chord_recipe(recipe: Any) -> dict[str, Any]:
    """Run a recipe's CHORD stages in order (each in ``<output_dir>/<i>-chord``); returns the last stage's summary."""
    from rlpost.logging import configure_wandb

    root = Path(recipe.output_dir)
    summary: dict[str, Any] = {}
    for i, stage in enumerate(recipe.stages):
        if stage.trainer != "chord":
            raise ValueError(f"stages.{i}: a CHORD recipe runs only `trainer: chord` stages, got {stage.trainer!r}.")
        run_dir = root / f"{i}-chord"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a rerun starts its curve afresh
        wandb_run = None
        if configure_wandb(recipe.tracking.wandb, run_dir, name=f"{recipe.name}-{i}"):
            import wandb

            wandb_run = wandb.init(config={"recipe": recipe.name, **stage.args}, reinit=True)
        try:
            summary = {**run_chord_stage(recipe, stage, run_dir, wandb_run), "run_dir": str(run_dir)}
        finally:
            if wandb_run is not None:
                wandb_run.finish()
    return summary
