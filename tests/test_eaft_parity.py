"""EAFT keeps what TRL's SFT loss adds around the token loss (MoE router aux loss, num_tokens) and refuses what it
would get wrong (sequence parallelism, a chunked LM head on models that scale or softcap their final logits)."""

import pytest
import torch

from rlpost.algorithms.losses import eaft_loss
from rlpost.trainers import SFTConfig, SFTTrainer
from rlpost.trainers.sft import final_logit_transforms


def _args(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path / "sft"), use_cpu=True, bf16=False, report_to="none", per_device_train_batch_size=8,
        max_steps=2, logging_steps=1, save_strategy="no", learning_rate=1e-3, seed=0, disable_tqdm=True,
        loss_type="eaft",
    )
    return SFTConfig(**{**base, **overrides})


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _tiny(config_cls, model_cls, tokenizer, **extra):
    torch.manual_seed(0)
    config = config_cls(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra)
    return model_cls(config)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_moe_router_aux_loss_is_added_as_trl_does(tmp_path, tiny_tokenizer, addition_task, chunk_size):
    from transformers import MixtralConfig, MixtralForCausalLM

    model = _tiny(MixtralConfig, MixtralForCausalLM, tiny_tokenizer, num_local_experts=4, num_experts_per_tok=2,
                  router_aux_loss_coef=0.5)
    trainer = SFTTrainer(model=model, args=_args(tmp_path, eaft_chunk_size=chunk_size),
                         train_dataset=addition_task.sft_dataset(), processing_class=tiny_tokenizer)
    assert trainer.aux_loss_enabled and trainer.router_aux_loss_coef == 0.5
    inputs = _batch(trainer)
    loss = trainer.compute_loss(trainer.model, dict(inputs))
    out = trainer.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        output_router_logits=True)
    token_loss = eaft_loss(out.logits, inputs["labels"], top_k=20, alpha=1.0)
    assert out.aux_loss > 0
    torch.testing.assert_close(loss, token_loss + 0.5 * out.aux_loss, rtol=1e-5, atol=1e-6)
    assert trainer._metrics["train"]["aux_loss"][-1] == pytest.approx(out.aux_loss.item(), rel=1e-5)


def test_num_tokens_metric_counts_trained_tokens(tmp_path, tiny_model, tiny_tokenizer, addition_task):
    trainer = SFTTrainer(model=tiny_model, args=_args(tmp_path), train_dataset=addition_task.sft_dataset(),
                         processing_class=tiny_tokenizer)
    inputs = _batch(trainer)
    trainer.model.train()  # as inside Trainer's loop (num_tokens counts training batches only)
    trainer.compute_loss(trainer.model, dict(inputs))
    trainer.compute_loss(trainer.model, dict(inputs))
    assert trainer._metrics["train"]["num_tokens"] == [2 * inputs["attention_mask"].sum().item()]
    trainer.train()  # and it reaches the logged rows, as TRL's does
    assert all("num_tokens" in row for row in trainer.state.log_history if "loss" in row)


@pytest.mark.parametrize("sizes", [{"sp_size": 2, "sp_backend": "deepspeed"}, {"cp_size": 2}])
def test_eaft_refuses_sequence_parallelism(tmp_path, sizes):
    from accelerate.parallelism_config import ParallelismConfig

    with pytest.raises(ValueError, match="loss_type='eaft' does not support sequence parallelism"):
        _args(tmp_path, parallelism_config=ParallelismConfig(**sizes))
    _args(tmp_path, loss_type="nll", parallelism_config=ParallelismConfig(**sizes))  # TRL's own losses: TRL decides


def test_chunked_head_refuses_softcapped_logits_and_the_model_path_handles_them(tmp_path, tiny_tokenizer,
                                                                                 addition_task):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    model = _tiny(Gemma2Config, Gemma2ForCausalLM, tiny_tokenizer, head_dim=16, final_logit_softcapping=0.5)
    assert final_logit_transforms(model.config) == {"final_logit_softcapping": 0.5}
    with pytest.raises(ValueError, match=r"final_logit_softcapping=0.5.*Set eaft_chunk_size: null"):
        SFTTrainer(model=model, args=_args(tmp_path), train_dataset=addition_task.sft_dataset(),
                   processing_class=tiny_tokenizer)
    trainer = SFTTrainer(model=model, args=_args(tmp_path, eaft_chunk_size=None),
                         train_dataset=addition_task.sft_dataset(), processing_class=tiny_tokenizer)
    inputs = _batch(trainer)
    loss = trainer.compute_loss(trainer.model, dict(inputs))
    logits = trainer.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert logits.abs().max() <= 0.5 + 1e-6  # the model's own logits are the softcapped ones
    torch.testing.assert_close(loss, eaft_loss(logits, inputs["labels"], top_k=20, alpha=1.0), rtol=1e-5, atol=1e-6)


def test_plain_models_have_no_logit_transform(tiny_model):
    assert final_logit_transforms(tiny_model.config) == {}
