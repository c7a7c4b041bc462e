"""ThinkRL-Edit reasoning rollouts: plan → generate → reflect (→ regenerate once), trained with one shared advantage.

ThinkRL-Edit (arXiv 2601.03467, abstract; released inference code ``infer_qwen.py``; ``specs/thinkrl-edit.md``
§3.2, §3.5) widens exploration beyond denoising noise by sampling a chain of reasoning per candidate:

1. **Plan**: a language-model planner rewrites the instruction into an explicit, visually grounded one (released
   prompt schema ``{"Rewrited": ...}``; sampled with temperature, so each of the G candidates has its own plan).
2. **Generate**: the flow editor produces the image conditioned on the plan (an SDE rollout of
   :class:`~rlpost.trainers.flow_grpo.FlowGRPOTrainer`, so every denoising step has a log-prob).
3. **Reflect**: a judge compares source and result (``{detect_difference, instruction_match, edit_suggestion}``);
   when the edit does not match and a suggestion is given, the plan is extended with "feedback on the last edit"
   plus the suggestion and the image is **generated once more**.
4. The final image is scored against the *task's* instruction (never the plan, so a planner cannot game the
   reward by rewriting the goal), advantages are computed per task group by the generator's estimator (GRPO or
   UCPG), and the candidate's advantage is shared by its plan tokens and its denoising trajectories.

The update has two policy ratios and one advantage (spec §3.5 [inferred: J = J_text + J_gen]): a token-level PPO
clip over the plan tokens (``text_clip_range``) and the Flow-GRPO per-step Gaussian ratio over the SDE steps
(the generator's ``clip_range``), summed and back-propagated once; then the planner's and the generator's optimizer
each step. The reflector is a frozen judge here [inferred option: the released pipeline uses a separate
Qwen3-VL for planning and reflection; only the planner's tokens are trained].

Single process only for now: the planner is a plain module beside the generator's accelerator.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from trl.trainer.utils import selective_log_softmax

from rlpost.algorithms.losses import ppo_clip_loss
from rlpost.rewards.checklist import judge_message
from rlpost.rewards.judges.parsing import extract_json, extract_yes_no
from rlpost.trainers.flow_grpo import FlowGRPOTrainer, FlowRollout, reward_batch

__all__ = [
    "DEFAULT_PLAN_PROMPT",
    "DEFAULT_REFLECT_PROMPT",
    "DEFAULT_FEEDBACK",
    "JudgeReflector",
    "PlanBatch",
    "ReasoningEditConfig",
    "ReasoningEditTrainer",
    "Reflection",
    "pretrain_planner",
]

# Paraphrases of the released infer_qwen.py prompts (planning: rewrite into a grounded instruction, JSON "Rewrited").
DEFAULT_PLAN_PROMPT = (
    "Rewrite this image-editing instruction into an explicit, visually grounded instruction that names the exact "
    "objects, positions and colours to change.{context}\nInstruction: {instruction}\n"
    'Answer with JSON only: {{"Rewrited": "..."}}'
)
DEFAULT_REFLECT_PROMPT = (
    "Image A is the source image and image B is the edited result.\n\nInstruction:\n{instruction}\n\n"
    "Compare A and B. Answer with JSON only: "
    '{{"detect_difference": "...", "instruction_match": true or false, "edit_suggestion": "..."}}'
)
DEFAULT_FEEDBACK = " Feedback on the last edit follows. {suggestion}"


@dataclass
class ReasoningEditConfig:
    """The reasoning loop's settings; the generator's own :class:`FlowGRPOConfig` holds the flow hyperparameters
    and the advantage estimator (one estimator for both ratios). ThinkRL-Edit publishes no training
    hyperparameters: every default below is [inferred] unless marked [V-code]."""

    num_candidates: int = 4  # G candidates (plan + image) per task [inferred]
    tasks_per_step: int = 1  # tasks per iteration
    max_steps: int = 100
    output_dir: str = "runs/reasoning_edit"
    seed: int = 0
    # -- planning --
    plan_prompt: str = DEFAULT_PLAN_PROMPT  # {instruction}; {context} = the record's `context` field (or "")
    plan_format: str = "json"  # "json": {"Rewrited": ...} [V-code]; "text": the whole completion is the plan
    use_chat_template: bool = True  # wrap the plan prompt as one user turn with the tokenizer's chat template
    plan_max_new_tokens: int = 128
    plan_temperature: float = 1.0  # > 0: every candidate samples its own plan [inferred, spec §3.2]
    # -- reflection --
    reflect: bool = True
    reflect_prompt: str = DEFAULT_REFLECT_PROMPT
    feedback_template: str = DEFAULT_FEEDBACK  # appended to the plan before the one regeneration [V-code]
    train_first_attempt: bool = True  # also train the trajectory that reflection rejected [inferred]
    # -- optimization of the planner (the generator's optimizer is its own) --
    train_planner: bool = True
    train_generator: bool = True
    text_clip_range: float = 0.2  # PPO ε on plan tokens [inferred: LM GRPO default]
    text_loss_weight: float = 1.0  # J = w·J_text + J_gen [inferred]
    planner_learning_rate: float = 1e-5
    planner_weight_decay: float = 0.0
    planner_max_grad_norm: float = 1.0
    logging_steps: int = 1

    def __post_init__(self) -> None:
        if self.num_candidates < 2:
            raise ValueError(f"num_candidates must be >= 2 to form a group baseline, got {self.num_candidates}.")
        if self.plan_format not in ("json", "text"):
            raise ValueError(f"plan_format must be 'json' or 'text', got {self.plan_format!r}.")
        if self.plan_temperature <= 0:
            raise ValueError("plan_temperature must be > 0: candidates must sample different plans (greedy plans "
                             "are used by evaluate()).")
        for name, template, needed in (("plan_prompt", self.plan_prompt, "{instruction}"),
                                       ("reflect_prompt", self.reflect_prompt, "{instruction}"),
                                       ("feedback_template", self.feedback_template, "{suggestion}")):
            if needed not in template:
                raise ValueError(f"{name} must contain {needed}.")
        if not (self.train_planner or self.train_generator):
            raise ValueError("train_planner and train_generator are both false: nothing to train.")


@dataclass
class Reflection:
    """A reflector's verdict on one edit."""

    match: bool
    suggestion: str
    difference: str = ""


class JudgeReflector:
    """Reflection through any judge (``OpenAIJudge``, ``LocalJudge``, a programmatic judge): source image A and
    result B as image parts, the released prompt's JSON schema; unreadable answers give None (no regeneration).

    Args:
        judge: anything with ``complete(prompts, **gen) -> list[str | None]``.
        prompt: template with ``{instruction}``.
        image_format: ``"openai"`` (data URLs, HTTP judges) or ``"object"`` (tensors, local VLM processors).
        gen: generation options for every call.
    """

    def __init__(self, judge: Any, prompt: str = DEFAULT_REFLECT_PROMPT, image_format: str = "openai",
                 gen: Mapping[str, Any] | None = None) -> None:
        if not callable(getattr(judge, "complete", None)):
            raise TypeError(f"JudgeReflector needs a judge with complete(prompts, **gen), got {type(judge).__name__}.")
        self.judge, self.prompt, self.image_format, self.gen = judge, prompt, image_format, dict(gen or {})

    def __call__(self, instructions: Sequence[str], sources: Sequence[Any], images: Sequence[Any]
                 ) -> list[Reflection | None]:
        prompts = [judge_message(self.prompt.format(instruction=instruction),
                                 [("Image A (source):", source), ("Image B (edited):", image)], self.image_format)
                   for instruction, source, image in zip(instructions, sources, images, strict=True)]
        return [parse_reflection(answer) for answer in self.judge.complete(prompts, **self.gen)]


def parse_reflection(text: str | None) -> Reflection | None:
    """``{"instruction_match": bool|"yes"/"no", "edit_suggestion": str, ...}`` → :class:`Reflection`, else None."""
    obj = extract_json(text) if text else None
    if obj is None or "instruction_match" not in obj:
        return None
    match = obj["instruction_match"]
    match = match if isinstance(match, bool) else extract_yes_no(str(match).replace("true", "yes").replace(
        "false", "no"))
    if match is None:
        return None
    return Reflection(match=match, suggestion=str(obj.get("edit_suggestion") or "").strip(),
                      difference=str(obj.get("detect_difference") or "").strip())


@dataclass
class PlanBatch:
    """Sampled plans: token ids ``[N, P + L]`` (left-padded prompts, then completions), masks, and the completion
    tokens' log-probs under the sampling policy ``old_log_probs [N, L]``."""

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor  # [N, L]: completion tokens up to and including the first EOS
    prompt_length: int
    old_log_probs: Tensor
    texts: list[str]  # the plans the generator is conditioned on
    fallbacks: int = 0  # plans that could not be read (the instruction itself was used)


class ReasoningEditTrainer:
    """Plan → generate → reflect → (regenerate) rollouts with one shared advantage and two PPO ratios.

    Args:
        planner: a causal LM (transformers) that writes the plans; trained unless ``train_planner=False``.
        tokenizer: its tokenizer (a pad token is required; left padding is used for generation).
        generator: a :class:`FlowGRPOTrainer` in ``flow_grpo`` or ``dance_grpo`` mode (every candidate has its own
            plan, so no anchor is shared as E-GRPO needs); its reward modules, advantage estimator, clip range and
            optimizer are used.
        tasks: records ``{"prompt": instruction, "source_image": ..., "context": optional text for the planner,
            ...}``; the other fields reach the reward modules as batch columns.
        args: :class:`ReasoningEditConfig`.
        reflector: callable ``(instructions, sources, images) -> list[Reflection | None]`` such as
            :class:`JudgeReflector`; None disables reflection.
    """

    def __init__(self, planner: torch.nn.Module, tokenizer: Any, generator: FlowGRPOTrainer,
                 tasks: Sequence[Mapping[str, Any]], args: ReasoningEditConfig, reflector: Any = None) -> None:
        if generator.args.mode == "e_grpo":
            raise ValueError("the reasoning loop conditions every candidate on its own plan, so candidates share no "
                             "E-GRPO anchor: build the generator with mode='flow_grpo' or 'dance_grpo'.")
        if generator.accelerator.num_processes > 1:
            raise NotImplementedError("ReasoningEditTrainer runs in one process for now (the planner is not wrapped "
                                      "by the generator's accelerator).")
        if tokenizer.pad_token_id is None:
            raise ValueError("the planner tokenizer has no pad token; set tokenizer.pad_token (e.g. to eos).")
        if not tasks or any(not isinstance(t.get("prompt"), str) for t in tasks):
            raise ValueError("tasks must be a non-empty list of records with a 'prompt' (instruction) string.")
        self.planner, self.tokenizer, self.generator, self.args = planner, tokenizer, generator, args
        self.tasks = [dict(t) for t in tasks]
        self.reflector = reflector if args.reflect else None
        self.device = generator.device
        self.planner.to(self.device)
        self.planner.requires_grad_(args.train_planner)
        self.optimizer = torch.optim.AdamW([p for p in planner.parameters() if p.requires_grad] or
                                           [torch.nn.Parameter(torch.zeros(1))], lr=args.planner_learning_rate,
                                           weight_decay=args.planner_weight_decay)
        self.rng = torch.Generator().manual_seed(args.seed)
        self.run_dir = Path(args.output_dir)
        self.global_step = 0

    # ------------------------------------------------------------------------------------------- 1. plan
    def plan_prompts(self, records: Sequence[Mapping[str, Any]]) -> list[str]:
        """The exact planner inputs for ``records`` (plan prompt with instruction and context, chat-templated when
        ``use_chat_template``): what :meth:`plan` generates from and :func:`pretrain_planner` trains on."""
        texts = []
        for record in records:
            context = record.get("context")
            prompt = self.args.plan_prompt.format(instruction=record["prompt"],
                                                  context=f"\n{context}" if context else "")
            if self.args.use_chat_template and getattr(self.tokenizer, "chat_template", None):
                prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                            add_generation_prompt=True)
            texts.append(prompt)
        return texts

    def token_log_probs(self, input_ids: Tensor, attention_mask: Tensor, prompt_length: int) -> Tensor:
        """Log-probs ``[N, L]`` of the completion tokens at the sampling temperature. Position ids follow the
        attention mask (left padding), as ``generate`` builds them, so these are the sampling policy's log-probs."""
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.planner(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
        return selective_log_softmax(logits[:, prompt_length - 1 : -1].float(), input_ids[:, prompt_length:],
                                     temperature=self.args.plan_temperature)

    @torch.no_grad()
    def plan(self, records: Sequence[Mapping[str, Any]], greedy: bool = False) -> PlanBatch:
        """Sample one plan per record (greedy for evaluation) and record its token log-probs."""
        tok = self.tokenizer
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(self.plan_prompts(records), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        enc = {k: v.to(self.device) for k, v in enc.items()}
        self.planner.eval()
        sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=self.args.plan_temperature,
                                                              top_k=0, top_p=1.0)
        out = self.planner.generate(**enc, max_new_tokens=self.args.plan_max_new_tokens, pad_token_id=tok.pad_token_id,
                                    eos_token_id=tok.eos_token_id, **sampling)
        prompt_length = enc["input_ids"].shape[1]
        completion = out[:, prompt_length:]
        is_eos = completion == tok.eos_token_id
        after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
        completion_mask = ~after_eos
        attention_mask = torch.cat([enc["attention_mask"], completion_mask.long()], dim=1)
        old = self.token_log_probs(out, attention_mask, prompt_length)
        texts, fallbacks = [], 0
        for record, ids, mask in zip(records, completion, completion_mask):
            text = self._read_plan(tok.decode(ids[mask], skip_special_tokens=True))
            if not text:
                text, fallbacks = record["prompt"], fallbacks + 1  # an unreadable plan: the instruction itself
            texts.append(text)
        return PlanBatch(out, attention_mask, completion_mask, prompt_length, old, texts, fallbacks)

    def _read_plan(self, completion: str) -> str:
        if self.args.plan_format == "text":
            return completion.strip()
        obj = extract_json(completion)
        value = obj.get("Rewrited", obj.get("rewritten")) if obj else None  # released key (sic), then the spelling
        return value.strip() if isinstance(value, str) else ""

    # ------------------------------------------------------------------------------------------- 2-3. generate, reflect
    @staticmethod
    def _conditioning(records: Sequence[Mapping[str, Any]], texts: Sequence[str]) -> list[dict[str, Any]]:
        """What the editor is conditioned on: the plan text (not the instruction) and the source image."""
        return [{"prompt": text, **({"source_image": r["source_image"]} if "source_image" in r else {})}
                for r, text in zip(records, texts, strict=True)]

    def _generate(self, records: Sequence[Mapping[str, Any]], plans: Sequence[str]) -> FlowRollout:
        rollout = self.generator.rollout(self._conditioning(records, plans), num_generations=1)
        rollout.images = self.generator.decoder(rollout.latents).float().cpu()
        return rollout

    def _reflect_and_revise(self, records, plans: Sequence[str], images) -> tuple[list, list[int], list[str]]:
        """Reflection on every edit: ``(reflections, indices to regenerate, their revised plans)``. A candidate is
        regenerated when the reflector read the edit as a mismatch and gave a suggestion."""
        if self.reflector is None:
            return [None] * len(records), [], []
        reflections = self.reflector([r["prompt"] for r in records], [r.get("source_image") for r in records],
                                     list(images))
        redo = [i for i, r in enumerate(reflections) if r is not None and not r.match and r.suggestion]
        revised = [plans[i] + self.args.feedback_template.format(suggestion=reflections[i].suggestion) for i in redo]
        return reflections, redo, revised

    # ------------------------------------------------------------------------------------------- the step
    def rollout(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Plan, generate, reflect and regenerate for every candidate; score the final images per task group."""
        g = self.args.num_candidates
        candidates = [record for record in records for _ in range(g)]
        group_ids = [i // g for i in range(len(candidates))]
        plans = self.plan(candidates)
        first = self._generate(candidates, plans.texts)
        reflections, redo, revised = self._reflect_and_revise(candidates, plans.texts, first.images)
        second = None
        final = first.images.clone()
        if redo:
            second = self._generate([candidates[i] for i in redo], revised)
            final[redo] = second.images
        # scored against the task's instruction (the candidates' `prompt`), not the plan
        rewards, per_func, metrics = self.generator.score_batch(reward_batch(final, candidates), group_ids)
        return dict(candidates=candidates, group_ids=group_ids, plans=plans, first=first, second=second, redo=redo,
                    reflections=reflections, images=final, rewards=rewards, rewards_per_func=per_func,
                    reward_metrics=metrics)

    def compute_advantages(self, rollout: Mapping[str, Any]) -> Tensor:
        """One advantage per candidate [N] from the generator's estimator over task groups (GRPO, UCPG, ...)."""
        gen = self.generator
        options = {"eps": gen.args.advantage_eps, "clip": gen.args.adv_clip_max, **gen.args.advantage_options}
        scores = gen.advantage_scores(rollout["rewards"], rollout["rewards_per_func"])
        adv = gen.advantage_fn(scores, torch.tensor(rollout["group_ids"]), **options)
        return torch.nan_to_num(adv, nan=0.0).to(self.device, torch.float32)

    def compute_loss(self, rollout: Mapping[str, Any], advantages: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``w·J_text + J_gen``: token-level PPO clip on the plans and the flow PPO clip on the SDE steps of the
        trajectories that produced the candidate (first attempt and regeneration), all with the candidate's
        advantage."""
        args, stats = self.args, {}
        loss = torch.zeros((), device=self.device)
        if args.train_planner:
            plans = rollout["plans"]
            self.planner.train()
            logp = self.token_log_probs(plans.input_ids, plans.attention_mask, plans.prompt_length)
            text_loss, text_stats = ppo_clip_loss(logp, plans.old_log_probs, advantages,
                                                  mask=plans.completion_mask, epsilon_low=args.text_clip_range)
            ratio = torch.exp(logp - plans.old_log_probs).detach()[plans.completion_mask]
            stats.update({"loss/text": text_loss.item(), "text/ratio_mean": ratio.mean().item(),
                          "text/ratio_max_dev": (ratio - 1).abs().max().item(),
                          "text/clip_ratio": text_stats["clip_ratio/region_mean"].item()})
            loss = loss + args.text_loss_weight * text_loss
        if args.train_generator:
            parts = []  # (rollout, per-image advantages)
            first, second, redo = rollout["first"], rollout["second"], rollout["redo"]
            rejected = set(redo)
            keep = [i for i in range(advantages.shape[0]) if args.train_first_attempt or i not in rejected]
            if keep:
                first_adv = torch.zeros_like(advantages)
                first_adv[keep] = advantages[keep]
                parts.append((first, first_adv, len(keep)))
            if second is not None:
                parts.append((second, advantages[redo], len(redo)))
            total = sum(n for _, _, n in parts)
            gen_loss = torch.zeros((), device=self.device)
            ratio_sum = clip_sum = 0.0
            for part, adv, n in parts:  # each trajectory set weighted by its number of candidates
                part_loss, part_stats = self.generator.compute_loss(part, adv, list(range(len(part.slot_index))))
                gen_loss = gen_loss + part_loss * n / total
                ratios = [v for k, v in part_stats.items() if k.endswith("/ratio_mean")]
                ratio_sum += sum(ratios) / len(ratios) * n
                clip_sum += part_stats["clip_ratio/region_mean"] * n
            stats["gen/ratio_mean"], stats["gen/clip_ratio"] = ratio_sum / total, clip_sum / total
            stats["loss/gen"] = gen_loss.item()
            loss = loss + gen_loss
        return loss, stats

    def step(self) -> dict[str, float]:
        """One iteration: plan → generate → reflect → (regenerate) → reward → advantage → one update of both."""
        t0 = time.perf_counter()
        picks = torch.randint(len(self.tasks), (self.args.tasks_per_step,), generator=self.rng).tolist()
        rollout = self.rollout([self.tasks[i] for i in picks])
        advantages = self.compute_advantages(rollout)
        t1 = time.perf_counter()
        gen = self.generator
        gen.model.train()
        loss, stats = self.compute_loss(rollout, advantages)
        gen.accelerator.backward(loss)
        if self.args.train_planner:
            stats["grad_norm/planner"] = float(torch.nn.utils.clip_grad_norm_(
                [p for p in self.planner.parameters() if p.requires_grad], self.args.planner_max_grad_norm))
            self.optimizer.step()
        if self.args.train_generator:
            norm = gen.accelerator.clip_grad_norm_(gen.model.parameters(), gen.args.max_grad_norm)
            stats["grad_norm/generator"] = math.nan if norm is None else float(norm)
            gen.optimizer.step()
            gen.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        gen.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.last_rollout = rollout
        rewards = rollout["rewards"]
        valid = ~torch.isnan(rewards)
        parsed = [r for r in rollout["reflections"] if r is not None]
        return {
            "reward": rewards[valid].mean().item() if valid.any() else math.nan,
            **rollout["reward_metrics"], **stats,
            "loss": loss.item(), "advantages/abs_mean": advantages.abs().mean().item(),
            "plan/mean_tokens": rollout["plans"].completion_mask.sum(1).float().mean().item(),
            "plan/fallbacks": float(rollout["plans"].fallbacks),
            "reflect/regenerated_frac": len(rollout["redo"]) / len(rollout["candidates"]),
            "reflect/match_frac": sum(r.match for r in parsed) / max(1, len(parsed)),
            "reflect/failures": float(len(rollout["reflections"]) - len(parsed)) if self.reflector else 0.0,
            "time/iteration_s": time.perf_counter() - t0, "time/train_s": time.perf_counter() - t1,
        }

    def train(self) -> list[dict[str, float]]:
        """Run ``max_steps`` iterations; rows go to ``<output_dir>/metrics.jsonl`` as stage ``reasoning_edit``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        history = []
        bar = tqdm(range(self.args.max_steps), desc="reasoning_edit")
        for _ in bar:
            row = self.step()
            history.append(row)
            bar.set_postfix(reward=f"{row['reward']:.4f}", regenerated=f"{row['reflect/regenerated_frac']:.2f}")
            if self.global_step % self.args.logging_steps == 0:
                from rlpost.logging import append_metrics  # non-finite values become null, as in every rlpost row

                append_metrics(self.run_dir, {"stage": "reasoning_edit", "step": self.global_step, **row})
        return history

    @torch.no_grad()
    def evaluate(self, tasks: Sequence[Mapping[str, Any]], seed: int = 0) -> dict[str, Any]:
        """Greedy plans, the deterministic ODE sampler, one reflection round: the mean reward (and per reward
        module) over ``tasks``, each its own group."""
        records = [dict(t) for t in tasks]
        plans = self.plan(records, greedy=True).texts
        images = self.generator.sample(self._conditioning(records, plans), seed=seed)
        _, redo, revised = self._reflect_and_revise(records, plans, images)
        if redo:
            images[redo] = self.generator.sample(self._conditioning([records[i] for i in redo], revised), seed=seed)
        rewards, per_func, _ = self.generator.score_batch(reward_batch(images, records), list(range(len(records))))
        names = [m.name for m in self.generator.reward_funcs]
        return {"reward": float(torch.nanmean(rewards)), "plans": plans, "regenerated": len(redo),
                **{f"rewards/{n}": float(torch.nanmean(per_func[:, k])) for k, n in enumerate(names)}}


def pretrain_planner(trainer: ReasoningEditTrainer, records: Sequence[Mapping[str, Any]], targets: Sequence[str],
                     steps: int, batch_size: int = 32, learning_rate: float = 1e-3, output_dir: str | Path | None = None,
                     seed: int = 0) -> list[float]:
    """Supervised warm start of the planner before RL: TRL SFT (rlpost's ``SFTTrainer``, completion-only loss) on
    ``plan_prompts(records)`` → ``targets`` (reference rewrites, wrapped as ``{"Rewrited": ...}`` when
    ``plan_format="json"``), so RL starts from a planner that writes plans in the expected format [inferred: the
    paper's planner is a pretrained VLM; a random tiny LM needs this]. Returns the logged training losses."""
    from datasets import Dataset

    from rlpost.trainers.sft import SFTConfig, SFTTrainer

    if len(records) != len(targets) or not records:
        raise ValueError(f"pretrain_planner needs one target per record, got {len(records)} records and "
                         f"{len(targets)} targets.")
    if trainer.args.plan_format == "json":
        targets = [json.dumps({"Rewrited": t}) for t in targets]
    dataset = Dataset.from_dict({"prompt": trainer.plan_prompts(records), "completion": list(targets)})
    precision = trainer.generator.args.mixed_precision
    args = SFTConfig(output_dir=str(output_dir or trainer.run_dir / "planner_pretrain"), max_steps=steps,
                     per_device_train_batch_size=batch_size, learning_rate=learning_rate, lr_scheduler_type="constant",
                     logging_steps=max(1, steps // 20), save_strategy="no", report_to="none", seed=seed,
                     use_cpu=trainer.device.type == "cpu",
                     # TRL defaults to bf16 even on CPU; follow the generator, whose Accelerator shares the process
                     bf16=precision == "bf16", fp16=precision == "fp16")
    trainer.planner.requires_grad_(True)
    try:
        sft = SFTTrainer(model=trainer.planner, args=args, train_dataset=dataset, processing_class=trainer.tokenizer)
        sft.train()
    finally:
        trainer.planner.requires_grad_(trainer.args.train_planner)
    trainer.planner.to(trainer.device)
    return [row["loss"] for row in sft.state.log_history if "loss" in row]
