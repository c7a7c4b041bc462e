"""rlpost.trainers.SFTTrainer with loss_type='eaft': the trainer's loss is the pure function's loss."""

import pytest
import torch

from rlpost.algorithms.losses import eaft_loss
from rlpost.trainers import SFTConfig, SFTTrainer


def _args(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path / "sft"), use_cpu=True, bf16=False, report_to="none", per_device_train_batch_size=8,
        max_steps=3, logging_steps=1, save_strategy="no", learning_rate=1e-3, seed=0, disable_tqdm=True,
        loss_type="eaft",
    )
    return SFTConfig(**{**base, **overrides})


def _batch(trainer):
    loader = trainer.get_train_dataloader()
    return trainer._prepare_inputs(next(iter(loader)))


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_eaft_trainer_loss_equals_pure_function(tmp_path, tiny_model, tiny_tokenizer, addition_task, chunk_size):
    trainer = SFTTrainer(model=tiny_model, args=_args(tmp_path, eaft_chunk_size=chunk_size),
                         train_dataset=addition_task.sft_dataset(), processing_class=tiny_tokenizer)
    inputs = _batch(trainer)
    loss = trainer.compute_loss(trainer.model, dict(inputs))
    logits = trainer.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    expected = eaft_loss(logits, inputs["labels"], top_k=20, alpha=1.0)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    plain = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), inputs["labels"][:, 1:].flatten(), ignore_index=-100
    )
    assert loss < plain, "EAFT weights are < 1, so the EAFT loss is below plain NLL on the same batch"


def test_eaft_trains_and_trl_losses_still_work(tmp_path, tiny_model, tiny_tokenizer, addition_task):
    trainer = SFTTrainer(model=tiny_model, args=_args(tmp_path), train_dataset=addition_task.sft_dataset(),
                         processing_class=tiny_tokenizer)
    assert trainer.args.loss_type == "eaft"
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    nll = SFTTrainer(model=tiny_model, args=_args(tmp_path, loss_type="nll"),
                     train_dataset=addition_task.sft_dataset(), processing_class=tiny_tokenizer)
    nll.train()
    nll_losses = [row["loss"] for row in nll.state.log_history if "loss" in row]
    assert len(nll_losses) == 3 and all(torch.isfinite(torch.tensor(nll_losses)))
    assert "mean_token_accuracy" in nll.state.log_history[0], "TRL's own nll path (and its metrics) still runs"


def test_empty_sft_dataset_is_a_clear_error(tmp_path, tiny_model, tiny_tokenizer, addition_task):
    with pytest.raises(ValueError, match="train_dataset is empty"):
        SFTTrainer(model=tiny_model, args=_args(tmp_path), train_dataset=addition_task.sft_dataset().select([]),
                   processing_class=tiny_tokenizer)


def test_eaft_logs_entropy_accuracy_and_weight(tmp_path, tiny_model, tiny_tokenizer, addition_task):
    trainer = SFTTrainer(model=tiny_model, args=_args(tmp_path, max_steps=2, logging_steps=1),
                         train_dataset=addition_task.sft_dataset(), processing_class=tiny_tokenizer)
    trainer.train()
    rows = [r for r in trainer.state.log_history if "loss" in r]
    assert len(rows) == 2
    for row in rows:
        assert 0.0 < row["entropy"] <= torch.log(torch.tensor(float(len(tiny_tokenizer)))).item() + 1e-4
        assert 0.0 <= row["mean_token_accuracy"] <= 1.0
        assert 0.0 <= row["eaft/weight_mean"] < 1.0
