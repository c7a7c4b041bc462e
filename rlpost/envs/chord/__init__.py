"""CHORD (arXiv 2601.04194): 4D motion of static objects distilled from a rectified-flow video model.

- :mod:`~rlpost.envs.chord.render`: differentiable splatting of isotropic Gaussians (CPU-sized gsplat stand-in);
- :mod:`~rlpost.envs.chord.motion`: control points + linear blend skinning, Fenwick-tree temporal store, coarse/fine;
- :mod:`~rlpost.envs.chord.regularizers`: ARAP on near-surface points, temporal 3D flow, weight schedules;
- :mod:`~rlpost.envs.chord.optimize`: the per-scene W-RFSDS loop and the per-point track export.
The math (W-RFSDS, tau schedules, Fenwick prefix sets) is in :mod:`rlpost.algorithms.rfsds` / ``fenwick``.
"""

from rlpost.envs.chord.motion import ControlPointLayer, HierarchicalMotion
from rlpost.envs.chord.optimize import ChordConfig, ChordResult, Scene, export_tracks, optimize_motion, toy_scene
from rlpost.envs.chord.render import render_gaussians, render_video

__all__ = [
    "ChordConfig", "ChordResult", "ControlPointLayer", "HierarchicalMotion", "Scene", "export_tracks",
    "optimize_motion", "render_gaussians", "render_video", "toy_scene",
]
