"""Tracking: wandb (offline unless told otherwise) plus rlpost's own metrics file and offline PNG plots.

wandb 0.31 cannot read its offline ``.wandb`` files back, so every run also appends each logged row to
``<run_dir>/metrics.jsonl``; ``rlpost report RUN_DIR`` draws its plots from that file, with no network.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

__all__ = [
    "CompactProgressCallback",
    "MetricsFileCallback",
    "append_metrics",
    "configure_wandb",
    "read_metrics",
    "truncate_metrics",
    "write_report",
]

METRICS_FILE = "metrics.jsonl"


def configure_wandb(mode: str, run_dir: str | os.PathLike, project: str = "rlpost", name: str | None = None) -> list:
    """Set wandb's environment for this run and return the ``report_to`` list for TRL configs.

    ``mode``: "offline" (default; nothing needs an account), "online", or "disabled". A recipe's "disabled" always
    wins; otherwise an explicit ``WANDB_MODE`` in the environment does, so a user can switch a recipe online without
    editing it. The run directory and name are set for every run (several runs may share one Python process).
    """
    if mode not in ("offline", "online", "disabled"):
        raise ValueError(f"tracking.wandb must be 'offline', 'online' or 'disabled', got {mode!r}.")
    if mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        return []
    os.environ["WANDB_MODE"] = os.environ.get("WANDB_MODE", mode)
    os.environ.setdefault("WANDB_PROJECT", project)
    os.environ["WANDB_DIR"] = str(run_dir)
    os.environ.setdefault("WANDB_SILENT", "true")
    if name is not None:
        os.environ["WANDB_NAME"] = name
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return ["wandb"]


class MetricsFileCallback(TrainerCallback):
    """Append every ``Trainer.log`` row to ``metrics.jsonl`` as ``{"stage", "step", **logs}`` (main process only)."""

    def __init__(self, run_dir: str | os.PathLike, stage: str):
        self.path = Path(run_dir) / METRICS_FILE
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        append_metrics(self.path.parent, {"stage": self.stage, "step": state.global_step, **logs})


# The metrics a progress bar shows, in this order, when a logged row has them (everything goes to metrics.jsonl).
KEY_METRICS = ("loss", "reward", "kl", "entropy", "mean_token_accuracy", "eval/heldout_accuracy")


class CompactProgressCallback(ProgressCallback):
    """Trainer's progress bar with the key metrics of the last logged row as its postfix, instead of a printed dict
    per logging step: one line per stage on the console (the rows themselves are in ``metrics.jsonl``)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        shown = {k.split("/")[-1]: logs[k] for k in KEY_METRICS if isinstance(logs.get(k), (int, float))}
        if shown:
            self.training_bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)


def append_metrics(run_dir: str | os.PathLike, row: dict) -> None:
    """Append one row to ``metrics.jsonl`` (flushed and fsynced, so a kill -9 loses at most the row being written)."""
    path = Path(run_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Rows of ``metrics.jsonl``; a torn last line (the process was killed mid-write) is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"No {METRICS_FILE} in {run_dir}: is this an rlpost run directory?")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(run_dir: str | os.PathLike, stage: str, last_step: int) -> None:
    """On resume, drop the rows a killed run logged after its last checkpoint, so the file matches one clean run."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    keep = [r for r in read_metrics(run_dir) if not (r.get("stage") == stage and r.get("step", 0) > last_step)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, path)


# Panels drawn by `rlpost report`: (title, metric-name predicate).
_PANELS = [
    ("reward", lambda k: k in ("reward",)),
    ("reward components", lambda k: k.startswith("rewards/") and k.endswith("/mean")),
    ("entropy", lambda k: k == "entropy"),
    ("loss", lambda k: k == "loss"),
    ("kl", lambda k: k == "kl"),
    ("held-out accuracy", lambda k: k == "eval/heldout_accuracy"),
]


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Draw one PNG per panel that has data (reward curve, components, entropy, loss, KL) and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    # One x axis across stages: stages run one after another, so offset each stage by the steps before it.
    offsets, last_stage, base, prev_step = [], None, 0, 0
    for row in rows:
        if row.get("stage") != last_stage:
            base, last_stage = base + prev_step, row.get("stage")
        prev_step = row.get("step", 0)
        offsets.append(base + prev_step)
    written = []
    for title, wanted in _PANELS:
        series: dict[str, tuple[list, list]] = {}
        for x, row in zip(offsets, rows):
            for key, value in row.items():
                if wanted(key) and isinstance(value, (int, float)):
                    stage = str(row.get("stage"))
                    label = key if stage.startswith("eval") else f"{stage}: {key}"  # evals form one curve
                    xs, ys = series.setdefault(label, ([], []))
                    xs.append(x)
                    ys.append(value)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=label)
        ax.set_title(title)
        ax.set_xlabel("optimizer step (all stages)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        path = out / f"{title.replace(' ', '_').replace('-', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
