"""Small builders shared by the GRPO tests (not a test module)."""

from rlpost.trainers import GRPOConfig


def grpo_args(tmp_path, **overrides) -> GRPOConfig:
    base = dict(
        output_dir=str(tmp_path / "grpo"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=3,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        beta=0.0,
        seed=0,
        disable_tqdm=True,
    )
    return GRPOConfig(**{**base, **overrides})


def digit_count_reward(completions, completion_ids, **kwargs):
    """A cheap reward that varies across completions (so group std is non-zero): a hash of the token ids."""
    return [float(sum(ids) % 7) for ids in completion_ids]
