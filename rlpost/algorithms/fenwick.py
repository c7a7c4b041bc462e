"""Fenwick-tree (binary indexed tree) temporal store for per-frame deformations (CHORD, arXiv 2601.04194, Eq. 10-11).

Frame 0 is the input snapshot and stays frozen (identity deformation). Frames ``1..T`` are stored as ``T`` nodes, node
``j`` holding the *cumulative* deformation over frames ``(j - lowbit(j), j]``. Frame ``t`` is the sum of the nodes in
the standard prefix set ``BIT(t) = {t, t - lowbit(t), ...}`` (Eq. 10), so neighbouring frames share nodes: a loss on a
late frame also moves the nodes that cover early intervals, which is the representation's temporal coherence.

Node tensors here are ``[T + 1, ...]`` with row 0 unused (kept at zero) so that node ``j`` is row ``j``, as in the
paper's 1-based notation.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lowbit", "prefix_nodes", "node_frames", "query", "query_all", "from_frames"]


def lowbit(j: int) -> int:
    """The lowest set bit of ``j`` (``j & -j``): the length of the interval node ``j`` covers."""
    if j < 1:
        raise ValueError(f"Fenwick nodes are numbered from 1, got {j}.")
    return j & -j


def prefix_nodes(t: int) -> list[int]:
    """The nodes whose sum is frame ``t`` (Eq. 10): ``[t, t - lowbit(t), ...]`` down to (not including) 0.

    ``prefix_nodes(6) == [6, 4]``, ``prefix_nodes(7) == [7, 6, 4]``, ``prefix_nodes(0) == []`` (frame 0 is frozen).
    """
    if t < 0:
        raise ValueError(f"Frame index must be >= 0, got {t}.")
    nodes = []
    while t > 0:
        nodes.append(t)
        t -= lowbit(t)
    return nodes


def node_frames(j: int) -> range:
    """The frames node ``j`` covers: ``(j - lowbit(j), j]``."""
    return range(j - lowbit(j) + 1, j + 1)


def query(nodes: Tensor, t: int) -> Tensor:
    """Frame ``t``'s deformation: ``sum_{j in BIT(t)} nodes[j]`` (Eq. 10). ``nodes``: ``[T + 1, ...]``; returns ``[...]``."""
    if t >= nodes.shape[0]:
        raise ValueError(f"Frame {t} is past the store's {nodes.shape[0] - 1} frames.")
    index = prefix_nodes(t)
    if not index:
        return torch.zeros_like(nodes[0])
    return nodes[index].sum(0)


def query_all(nodes: Tensor) -> Tensor:
    """Every frame's deformation, ``[T + 1, ...]`` with row 0 (frame 0) exactly zero."""
    return torch.stack([query(nodes, t) for t in range(nodes.shape[0])])


def from_frames(frames: Tensor) -> Tensor:
    """The node tensor whose prefix queries give ``frames`` (``[T + 1, ...]``, row 0 must be the frozen frame 0 = 0).

    Node ``j`` = ``frames[j] - frames[j - lowbit(j)]``: the increment over the frames it covers. Used to re-initialise
    late frames (CHORD's "split training" copies frame ``t_ref`` onto every later frame) without leaving the tree form.
    """
    nodes = torch.zeros_like(frames)
    for j in range(1, frames.shape[0]):
        nodes[j] = frames[j] - frames[j - lowbit(j)]
    return nodes
