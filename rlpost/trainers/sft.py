"""SFT: ``trl.SFTTrainer`` plus the EAFT entropy-adaptive loss (``loss_type="eaft"``).

EAFT (Entropy-Adaptive Fine-Tuning, arXiv 2601.02151, eqs. 2-3) weights each token's cross-entropy by the model's
normalized top-K entropy at that position, detached, so confidently-wrong tokens ("confident conflicts") barely move
the model. The math lives in :mod:`rlpost.algorithms.losses`; this class only routes the hidden states there.

TRL's own losses (``nll``, ``dft``) are untouched: any other ``loss_type`` goes straight to TRL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trl

from rlpost.algorithms.losses import chunked_eaft_loss, eaft_loss

__all__ = ["SFTConfig", "SFTTrainer"]


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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.loss_type != "eaft":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        model_inputs["use_cache"] = False
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
            loss = chunked_eaft_loss(
                outputs.hidden_states[-1], head.weight, labels, chunk_size=self.args.eaft_chunk_size,
                lm_head_bias=getattr(head, "bias", None), **options,
            )
        else:
            outputs = model(**model_inputs)
            loss = eaft_loss(outputs.logits, labels, **options)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as TRL: num_items counts every rank's tokens
        return (loss, outputs) if return_outputs else loss

    def _can_chunk(self) -> bool:
        if self.args.eaft_chunk_size is None:
            return False
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return plugin is None or plugin.zero_stage != 3
