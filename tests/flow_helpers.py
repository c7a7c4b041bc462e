"""Reward modules shared by the flow-model trainer tests (not a test module)."""

from rlpost.rewards import RewardModule, RewardOutput


class ConstantReward(RewardModule):
    name = "constant"
    description = "always 1"
    requires = ("image",)

    def score_one(self, sample):
        return 1.0


class BrightnessReward(RewardModule):
    """Mean pixel value; remembers the prompts it was asked about (``self.prompts``)."""

    name = "brightness"
    description = "mean pixel value"
    requires = ("image",)

    def score_batch(self, batch, group_ids):
        self.prompts = list(batch.get("prompt", []))
        return RewardOutput([float(image.mean()) for image in batch["image"]])
