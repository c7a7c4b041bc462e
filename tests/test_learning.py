"""The quickstart's learning claim, end to end on the real recipe, on two seeds: GRPO raises held-out accuracy over the
SFT checkpoint and beats more EAFT SFT for the same wall-clock time; rejection-sampling SFT (RS-SFT) for that time is
measured beside it.

All arms come from :func:`rlpost.eval.controls.quickstart_controls`, the code path of
``benchmarks/quickstart_control.py`` (whose 3-seed table is in the README). The margins asserted (0.10) are well below
the measured gains, and hold on CPUs whose floating-point paths differ (the accuracies themselves do not: README).
RS-SFT is not asserted to lose: at equal wall time it beats GRPO on this task (README), and this test must not claim
otherwise; it is asserted to learn from the checker (beat the SFT checkpoint), which is what makes it a real control.
"""

from pathlib import Path

import pytest

from rlpost.eval.controls import quickstart_controls

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_beats_sft_checkpoint_and_equal_time_sft(tmp_path, seed):
    row = quickstart_controls(RECIPE, seed, tmp_path / f"seed{seed}")
    assert row["after_grpo"] >= row["after_sft"] + 0.10, row
    assert row["after_grpo"] >= row["after_more_sft"] + 0.10, row
    assert row["rs_accepted"] > 0 and row["rs_sft_steps"] > 0, row  # the control trained on accepted samples
    assert row["after_rs_sft"] >= row["after_sft"] + 0.05, row
    assert abs(row["rs_sft_seconds"] - row["grpo_seconds"]) <= 0.2 * row["grpo_seconds"], row  # equal wall time
