"""Pure tensor math for rlpost: advantages, policy/fine-tuning losses, flow-model SDE steps.

Modules here import torch/numpy only: no trainer, config object, I/O or logging. Each public
function cites the paper equation it implements and states its tensor shapes.
"""
