"""Learning check (slow tier): checklist + consistency + quality flow GRPO with UCPG raises the held-out checklist score
of a briefly pre-trained tiny editor on the shapes env.

Runs ``recipes/thinkrl_edit/tiny.yaml`` through :func:`rlpost.flow_pipeline.run_flow_recipe` with the longer
settings of ``benchmarks/bench_ucpg.py``; the held-out score is the mean checklist reward of the deterministic ODE
sampler (``trainer.sample``) on tasks whose (operation, colour, cell) combination never occurs in training.

The measured gains are small (see MARGIN); docs/thinkrl_edit.md has the benchmark against the weighted sum and the
equal-time supervised control, which beats both RL arms by a wide margin.
"""

from __future__ import annotations

import pytest

from rlpost.flow_pipeline import run_flow_recipe

RECIPE = "recipes/thinkrl_edit/tiny.yaml"
SETTINGS = ["data.task_options.num_heldout=128", "flow_grpo.max_steps=100"]  # the recipe's own values, pinned
# Measured with these settings (1 core shared with other jobs, ~3.5 min per seed): seed 0 0.461 -> 0.529 (+0.068),
# seed 1 0.321 -> 0.356 (+0.034); at 40 iterations the gains were +0.014 / +0.025, and without the recipe's KL term
# (beta 0) seed 1 fell to 0.184. Modest gains: the margin sits below the smaller of the two (docs/thinkrl_edit.md).
MARGIN = 0.02


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_ucpg_flow_grpo_raises_heldout_checklist(tmp_path, seed):
    result = run_flow_recipe(RECIPE, [*SETTINGS, f"seed={seed}", f"model.seed={seed}", f"output_dir={tmp_path}"])
    before = result["heldout"]["before"]["heldout/shapes_checklist"]
    after = result["heldout"]["after"]["heldout/shapes_checklist"]
    assert result["pretrain_losses"][-1] < result["pretrain_losses"][0]
    assert after - before >= MARGIN, (before, after)
