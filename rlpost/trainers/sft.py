"""SFT: ``trl.SFTTrainer`` plus the EAFT entropy-adaptive loss (``loss_type="eaft"``).

EAFT (Entropy-Adaptive Fine-Tuning, arXiv 2601.02151, eqs. 2-3) weights each token's cross-entropy by the model's
normalized top-K entropy at that position, detached, so confidently-wrong tokens ("confident conflicts") barely move
the model. The math lives in :mod:`rlpost.algorithms.losses`; this class only routes the hidden states there.

TRL's own losses (``nll``, ``dft``) are untouched: any other ``loss_type`` goes straight to TRL. The EAFT path keeps
what TRL's loss adds around the token loss: the MoE router auxiliary loss (``router_aux_loss_coef``) and the
``num_tokens`` / ``aux_loss`` metrics. It refuses sequence parallelism, and its chunked LM head refuses models that
scale or softcap their final logits (``eaft_chunk_size: null`` reads the model's own logits instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import trl
from transformers import TrainerCallback

from rlpost.algorithms.losses import chunked_eaft_loss, eaft_loss, eaft_weights

__all__ = ["SFTConfig", "SFTTrainer", "final_logit_transforms"]


@dataclass
class SFTConfig(trl.SFTConfig):
    """TRL's ``SFTConfig`` plus EAFT. Defaults are the paper's (arXiv 2601.02151, §3 and App. B).

    Args:
        loss_type: TRL's ``"nll"`` / ``"dft"``, or ``"eaft"``.
        eaft_top_k: K of the top-K entropy (paper: 20).
        eaft_alpha: exponent of the weight H̃^α (paper: 1; EAFT² / EAFT³ ablations use 2 / 3).
        eaft_normalizer: ``"ln_k"`` (paper: divide by ln K), ``"constant"`` (3.0, the authors' released code) or
            ``"none"``.
        eaft_entropy: ``"top_k"`` (paper) or ``"full"`` (full-vocabulary entropy, an ablation).
        eaft_gate: ``"power"`` (paper) or ``"sigmoid"`` (ablation, σ(30·(H̃ − 0.17))).
        eaft_chunk_size: tokens per chunk of the LM head; None materializes the full logits (needed under
            DeepSpeed ZeRO-3, whose partitioned LM-head weight cannot be read outside the forward).
    """

    eaft_top_k: int = field(default=20, metadata={"help": "K of the top-K entropy (EAFT paper: 20)."})
    eaft_alpha: float = field(default=1.0, metadata={"help": "Exponent of the EAFT weight (paper: 1)."})
    eaft_normalizer: str = field(default="ln_k", metadata={"help": "'ln_k' (paper), 'constant' (3.0), 'none'."})
    eaft_entropy: str = field(default="top_k", metadata={"help": "'top_k' (paper) or 'full'."})
    eaft_gate: str = field(default="power", metadata={"help": "'power' (paper) or 'sigmoid'."})
    eaft_chunk_size: int | None = field(default=1024, metadata={"help": "LM-head chunk (tokens); None = unchunked."})

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type == "eaft" and _splits_sequences(self.parallelism_config):
            raise ValueError(
                "loss_type='eaft' does not support sequence parallelism (parallelism_config with cp_size > 1 or "
                "sp_size > 1): each rank would weight its shard of every sequence with its own loss normalization. "
                "Set cp_size=1 and sp_size=1, or use TRL's loss_type='nll'."
            )


def _splits_sequences(parallelism_config) -> bool:
    """Context or (Ulysses) sequence parallelism: TRL's ``parallelism_config.cp_size`` / ``sp_size`` above 1."""
    if parallelism_config is None:
        return False
    return bool(getattr(parallelism_config, "cp_enabled", False) or getattr(parallelism_config, "sp_enabled", False))


# Config attributes with which a model transforms its final logits after the LM head (value = "no transform").
# The chunked EAFT path multiplies hidden states by the head weight itself, so it would skip these.
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0,
                     "output_logits_scale": 1.0}


def final_logit_transforms(config) -> dict:
    """The final-logit scaling / softcapping a model config asks for (Gemma 2/3 ``final_logit_softcapping``, Cohere
    ``logit_scale``, Granite ``logits_scaling``), including a multimodal model's ``text_config``; {} if none."""
    found = {}
    for cfg in (config, getattr(config, "text_config", None)):
        for name, neutral in _LOGIT_TRANSFORMS.items():
            value = getattr(cfg, name, neutral) if cfg is not None else neutral
            if value is not None and value != neutral:
                found[name] = value
    return found


class _RestoreTokenCount(TrainerCallback):
    """On resume, continue TRL's ``num_tokens`` counter from the checkpoint instead of from 0: its value is the one
    logged at the checkpoint's step (exact when a logging step coincides with the save step, as with rlpost's
    defaults; otherwise TRL's behaviour, counting from the resume, is kept)."""

    def __init__(self, trainer: "SFTTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0 or self.trainer._total_train_tokens:
            return
        rows = [r for r in state.log_history if r.get("step") == state.global_step and "num_tokens" in r]
        if rows:
            self.trainer._total_train_tokens = int(rows[-1]["num_tokens"])


class SFTTrainer(trl.SFTTrainer):
    """``trl.SFTTrainer`` that also accepts ``loss_type="eaft"`` (see :class:`SFTConfig`)."""

    def __init__(self, model, args: SFTConfig | None = None, train_dataset=None, **kwargs):
        args = args if args is not None else SFTConfig(output_dir="runs/sft")
        if args.loss_type == "eaft" and not isinstance(args, SFTConfig):
            raise TypeError("loss_type='eaft' needs rlpost.trainers.SFTConfig (it carries the eaft_* options).")
        if train_dataset is not None and hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
            raise ValueError("train_dataset is empty: SFT needs at least one example. Check the data path and splits.")
        # TRL validates loss_type against its own list in __init__; present "nll" to it, then restore.
        eaft = args.loss_type == "eaft"
        if eaft:
            args.loss_type = "nll"
        try:
            super().__init__(model=model, args=args, train_dataset=train_dataset, **kwargs)
        finally:
            if eaft:
                args.loss_type = "eaft"
        if eaft:
            self._check_eaft_model()
        self.add_callback(_RestoreTokenCount(self))

    def _check_eaft_model(self) -> None:
        """Refuse what the EAFT path would get wrong, before training: sequence parallelism set up by the
        accelerator, and a chunked LM head on a model that scales or softcaps its final logits."""
        if _splits_sequences(getattr(self.accelerator, "parallelism_config", None)):
            raise ValueError("loss_type='eaft' does not support sequence parallelism (cp_size / sp_size > 1 in the "
                             "accelerate config); set them to 1, or use loss_type='nll'.")
        transforms = final_logit_transforms(self.accelerator.unwrap_model(self.model).config)
        if transforms and self.args.eaft_chunk_size is not None:
            found = ", ".join(f"{k}={v}" for k, v in transforms.items())
            raise ValueError(
                f"This model transforms its final logits ({found}), which the chunked EAFT LM head does not apply, so "
                "the loss and weights would use the wrong distribution. Set eaft_chunk_size: null (EAFT then reads "
                "the model's own logits, at the memory cost of full logits)."
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.loss_type != "eaft":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        model_inputs["use_cache"] = False
        if self.aux_loss_enabled:  # MoE: the model returns its router load-balancing loss (as TRL asks for it)
            model_inputs["output_router_logits"] = True
        options = dict(
            top_k=self.args.eaft_top_k,
            alpha=self.args.eaft_alpha,
            normalizer=self.args.eaft_normalizer,
            entropy=self.args.eaft_entropy,
            gate=self.args.eaft_gate,
            num_items_in_batch=num_items_in_batch,
        )
        if self._can_chunk():
            # logits_to_keep=1: the model builds logits for one position only; the loss runs the LM head in chunks.
            outputs = model(**model_inputs, output_hidden_states=True, logits_to_keep=1)
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            hidden = outputs.hidden_states[-1]
            loss = chunked_eaft_loss(
                hidden, head.weight, labels, chunk_size=self.args.eaft_chunk_size,
                lm_head_bias=getattr(head, "bias", None), **options,
            )
            if self._logs_this_step():
                self._record_metrics(lambda h: head(h), hidden, labels)
        else:
            outputs = model(**model_inputs)
            loss = eaft_loss(outputs.logits, labels, **options)
            if self._logs_this_step():
                self._record_metrics(lambda logits: logits, outputs.logits, labels)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as TRL: num_items counts every rank's tokens
        if self.aux_loss_enabled:
            # As TRL: the coefficient-weighted router loss, a per-micro-batch mean, averaged over accumulation steps
            # when the token loss is normalized by num_items_in_batch.
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
        self._record_token_count(inputs, outputs)
        return (loss, outputs) if return_outputs else loss

    def _record_token_count(self, inputs, outputs) -> None:
        """TRL's ``num_tokens`` (tokens trained on so far, every rank) and ``aux_loss`` metrics."""
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            if "attention_mask" in inputs:
                count = inputs["attention_mask"].sum()
            else:  # padding-free batches carry position_ids instead
                count = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(count).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if self.aux_loss_enabled:
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())

    def _logs_this_step(self) -> bool:
        # Trainer logs after global_step is incremented, so the step being computed logs when (step + 1) % n == 0.
        return not self.model.training or (self.state.global_step + 1) % max(1, int(self.args.logging_steps)) == 0

    @torch.no_grad()
    def _record_metrics(self, to_logits, states, labels) -> None:
        """TRL's ``entropy`` / ``mean_token_accuracy`` plus ``eaft/weight_mean``, on logged steps only (one more LM-head
        pass over the loss tokens, chunked like the loss)."""
        mode = "train" if self.model.training else "eval"
        valid = labels[:, 1:] != -100
        states, gold = states[:, :-1][valid], labels[:, 1:][valid]
        totals = torch.zeros(3, device=states.device)
        chunk = self.args.eaft_chunk_size or states.shape[0] or 1
        for start in range(0, states.shape[0], chunk):
            logits = to_logits(states[start : start + chunk]).float()
            totals[0] += torch.distributions.Categorical(logits=logits).entropy().sum()
            totals[1] += (logits.argmax(-1) == gold[start : start + chunk]).sum()
            totals[2] += eaft_weights(
                logits, top_k=self.args.eaft_top_k, alpha=self.args.eaft_alpha, normalizer=self.args.eaft_normalizer,
                entropy=self.args.eaft_entropy, gate=self.args.eaft_gate,
            ).sum()
        totals = self.accelerator.gather_for_metrics(torch.cat([totals, totals.new_tensor([gold.numel()])]).view(1, -1))
        totals = totals.sum(0)
        count = totals[3].clamp(min=1)
        for name, value in zip(("entropy", "mean_token_accuracy", "eaft/weight_mean"), totals[:3] / count):
            self._metrics[mode][name].append(value.item())

    def _can_chunk(self) -> bool:
        if self.args.eaft_chunk_size is None:
            return False
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return plugin is None or plugin.zero_stage != 3
