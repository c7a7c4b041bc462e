"""Trainers: thin orchestration over TRL, delegating math to rlpost.algorithms and scoring to rlpost.rewards."""

from rlpost.trainers.flow_grpo import FlowGRPOConfig, FlowGRPOTrainer
from rlpost.trainers.grpo import GRPOConfig, GRPOTrainer
from rlpost.trainers.reasoning_edit import ReasoningEditConfig, ReasoningEditTrainer
from rlpost.trainers.sft import SFTConfig, SFTTrainer

__all__ = ["FlowGRPOConfig", "FlowGRPOTrainer", "GRPOConfig", "GRPOTrainer", "ReasoningEditConfig",
           "ReasoningEditTrainer", "SFTConfig", "SFTTrainer"]
