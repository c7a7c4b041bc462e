"""rlpost: one GRPO core and one SFT core for RL post-training of LMs and flow-matching models."""

__version__ = "0.1.0"
