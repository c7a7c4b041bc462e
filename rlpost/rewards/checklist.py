"""ThinkRL-Edit's binary checklist reward: a judge writes yes/no questions per prompt, then answers them per sample.

ThinkRL-Edit (arXiv 2601.03467, abstract; ``specs/thinkrl-edit.md`` §3.3) replaces unstable 1-5 VLM scores by a
checklist: from the instruction (and the source image, for editing) a judge derives binary questions that a correct
result must satisfy, then answers each one on the result; the reward is the fraction of "yes"::

    r_IF = #yes / #questions  in [0, 1]

The questions are generated once per prompt and cached (keyed by the prompt text and the source image), so all G
members of a group are judged against the same list [inferred, spec §3.3]. Works on text completions
(``target="completion"``) and on images (``target="image"``, e.g. inside the flow trainer), with the images sent to
the judge as message content parts.

Failures never raise: a judge that returns None (down, timed out) or an answer that cannot be read gives None for the
samples it affects, counted in the ``judge_failures`` / ``parse_failures`` metrics. A question list that fails is
not cached, so the next step asks again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import re
import string
import struct
import threading
import zlib
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from rlpost.rewards.base import RewardModule, RewardOutput, as_text
from rlpost.rewards.judges.parsing import extract_json, extract_yes_no
from rlpost.rewards.registry import register_reward

__all__ = [
    "DEFAULT_ANSWER_PROMPT",
    "DEFAULT_JOINT_ANSWER_PROMPT",
    "DEFAULT_QUESTION_PROMPT",
    "ChecklistReward",
    "image_to_data_url",
    "judge_message",
    "parse_questions",
]

DEFAULT_QUESTION_PROMPT = (
    "You write a checklist that verifies whether a result follows an instruction.\n\n"
    "Instruction:\n{instruction}\n\n"
    "Write {num_questions} short yes/no questions. Each question checks one concrete requirement of the instruction"
    "{source_note}, phrased so that 'yes' means the requirement is met.\n"
    'Answer with JSON only: {{"questions": ["...", "..."]}}'
)
DEFAULT_ANSWER_PROMPT = (
    "Instruction:\n{instruction}\n\nResult:\n{response}\n\n"
    "Question: {question}\nAnswer with one word: yes or no."
)
DEFAULT_JOINT_ANSWER_PROMPT = (
    "Instruction:\n{instruction}\n\nResult:\n{response}\n\n"
    "Answer each question about the result with yes or no.\n{questions}\n"
    'Answer with JSON only: {{"answers": ["yes" or "no", ...]}}, one entry per question, in order.'
)
_SOURCE_NOTE = " (the source image to edit is attached)"
_IMAGE_RESPONSE = "(the result is the attached edited image)"
_NUMBERED = re.compile(r"^\s*(?:[-*•]|\(?\d+[.)]|Q\d+[.:)])\s*(.+?\?)\s*$", re.MULTILINE)


# --------------------------------------------------------------------------------------------------- parsing


def parse_questions(text: str | None, limit: int) -> list[str] | None:
    """The questions a judge wrote, at most ``limit``; None when none can be read.

    Accepted forms, in order: a JSON object with a ``questions`` list (the default prompt's schema, repaired if
    near-JSON), a bare JSON list of strings, then numbered or bulleted lines ending in ``?``.
    """
    if not text:
        return None
    found: list[Any] | None = None
    obj = extract_json(text)
    if obj is not None and isinstance(obj.get("questions"), list):
        found = obj["questions"]
    if found is None:
        start, end = text.find("["), text.rfind("]")
        if 0 <= start < end:
            try:
                value = json.loads(text[start : end + 1])
            except json.JSONDecodeError:
                value = None
            found = value if isinstance(value, list) else None
    if found is None:
        found = _NUMBERED.findall(text)
    questions = [q.strip() for q in found if isinstance(q, str) and q.strip()]
    return questions[:limit] or None


def _parse_joint_answers(text: str | None, count: int) -> list[bool] | None:
    """``{"answers": [...]}`` with exactly ``count`` readable yes/no entries, else None."""
    obj = extract_json(text) if text else None
    answers = obj.get("answers") if obj is not None else None
    if not isinstance(answers, list) or len(answers) != count:
        return None
    verdicts = [a if isinstance(a, bool) else extract_yes_no(str(a)) for a in answers]
    return None if any(v is None for v in verdicts) else verdicts


# --------------------------------------------------------------------------------------------------- images


def _png_bytes(image: Any) -> bytes:
    """Encode any image :func:`~rlpost.rewards.image.to_image_tensor` takes as an 8-bit RGB PNG (stdlib zlib only,
    so no Pillow is needed to talk to an HTTP judge)."""
    from rlpost.rewards.image import to_image_tensor

    pixels = (to_image_tensor(image) * 255).round().byte().permute(1, 2, 0).contiguous().numpy()  # [H, W, 3]
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))  # filter byte 0 per scanline

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit depth, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def image_to_data_url(image: Any) -> str:
    """An image as a URL an OpenAI-compatible judge accepts.

    ``http(s)://`` and ``data:`` strings pass through; another string is a file path, read and base64-encoded; a PIL
    image is saved as PNG; a tensor or array (``[3, H, W]``/``[H, W, 3]``, float in [0, 1] or uint8) is PNG-encoded.
    """
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:")):
        return image
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"checklist: image path {str(path)!r} does not exist; pass an existing file, a "
                                    "URL, a PIL image or a tensor.")
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
    if hasattr(image, "save") and hasattr(image, "mode"):  # PIL
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = _png_bytes(image)
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


def judge_message(text: str, images: Sequence[tuple[str, Any]], image_format: str = "openai"
                  ) -> str | list[dict[str, Any]]:
    """One user turn for a judge: plain ``text``, or each ``(label, image)`` as a text part and an image part,
    followed by ``text``. ``image_format``: ``"openai"`` (``image_url`` with a data URL, for HTTP judges) or
    ``"object"`` (the image itself, for a :class:`~rlpost.rewards.judges.LocalJudge` processor)."""
    images = [(label, image) for label, image in images if image is not None]
    if not images:
        return text
    parts: list[dict[str, Any]] = []
    for label, image in images:
        parts.append({"type": "text", "text": label})
        parts.append({"type": "image", "image": image} if image_format == "object"
                     else {"type": "image_url", "image_url": {"url": image_to_data_url(image)}})
    parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def _image_key(image: Any) -> str:
    """A stable cache key for an image (by its pixels), so equal source images share one checklist."""
    if image is None:
        return ""
    if isinstance(image, (str, Path)):
        return str(image)
    tobytes = getattr(image, "tobytes", None)
    if tobytes is None and hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().contiguous().numpy()
        tobytes = image.tobytes
    data = tobytes() if callable(tobytes) else repr(image).encode()
    return hashlib.sha256(data + str(getattr(image, "shape", getattr(image, "size", ""))).encode()).hexdigest()


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


# --------------------------------------------------------------------------------------------------- the reward


@register_reward("checklist")
class ChecklistReward(RewardModule):
    """Fraction of a judge's yes/no checklist questions answered "yes" (ThinkRL-Edit §3.3).

    Args:
        judge: a :class:`~rlpost.rewards.judges.Judge` (``OpenAIJudge``, ``LocalJudge``, anything with
            ``complete(prompts, **gen)``), or a dict of options for one: with ``base_url`` it builds an
            ``OpenAIJudge``, else a ``LocalJudge`` (so a recipe can configure it).
        num_questions: questions asked for per prompt; a judge that writes more is cut to this many, fewer are used
            as given. Default 6 [inferred: the spec suggests 4-8; DDA-Thinker uses at most about 6].
        question_prompt: template with ``{instruction}`` and ``{num_questions}`` (optional ``{source_note}``, which
            reads " (the source image to edit is attached)" when a source image is sent, else "").
        answer_prompt: template with ``{question}`` and ``{response}`` (optional ``{instruction}``); for
            ``answer_mode="joint"`` it needs ``{questions}`` (numbered lines) instead of ``{question}``. None picks
            the default of the answer mode.
        answer_mode: ``"each"`` (default: one yes/no call per question, the most robust with small judges and
            cacheable per question) or ``"joint"`` (one call per sample answering ``{"answers": [...]}``, the
            spec's suggested schema; a list of the wrong length counts as a parse failure). [inferred option]
        cache: per-prompt question cache. True (default): in memory for this instance; False: regenerate every call
            (still once per group within a call); or any mutable mapping (e.g. a ``shelve``) to share or persist
            it. Keys are ``"<sha256 of prompt text and source image>"``, values the question lists.
        target: what the questions are answered on: ``"completion"`` (default; requires ``prompt`` and
            ``completion``) or ``"image"`` (requires ``prompt`` and ``image``; the flow trainer passes no
            completion). The image travels as a content part.
        source_image_field: optional batch column with the source (reference) image, sent with the question prompt
            and with each answer prompt when the batch has it. Not required.
        image_format: how image parts are written. ``"auto"`` (default): ``{"type": "image", "image": ...}`` for a
            ``LocalJudge`` (its processor's chat template takes the object), else ``{"type": "image_url",
            "image_url": {"url": <data URL>}}`` for HTTP judges. ``"openai"`` / ``"object"`` force one.
        gen: generation parameters passed to every judge call (e.g. ``{"max_tokens": 256}``).
        **options: ``name``, ``timeout_s``, ``max_concurrency``, ``field_map`` of :class:`RewardModule`.

    Each group is judged against the questions of its first member's prompt (and source image), so a group is
    never scored against two lists. A sample scores None when its group has no questions or any of its answers is
    missing; partial checklists would bias the fraction.

    Metrics: ``judge_failures`` (judge calls answered None), ``parse_failures`` (answers that held no question
    list or verdict), ``question_cache_hits`` (groups served from the cache), ``questions`` (mean list length).
    Columns: ``questions`` (the list, one per line) and ``answers`` (``yes``/``no``/``?`` per question).
    """

    description = "ThinkRL-Edit checklist: a judge writes yes/no questions per prompt, score = fraction answered yes."
    requires = ("prompt", "completion")
    granularity = "groupwise"

    def __init__(
        self,
        judge: Any,
        *,
        num_questions: int = 6,
        question_prompt: str = DEFAULT_QUESTION_PROMPT,
        answer_prompt: str | None = None,
        answer_mode: str = "each",
        cache: bool | MutableMapping[str, list[str]] = True,
        target: str = "completion",
        source_image_field: str = "source_image",
        image_format: str = "auto",
        gen: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if isinstance(judge, Mapping):
            judge = self._build_judge(dict(judge))
        if not callable(getattr(judge, "complete", None)):
            raise TypeError(
                f"checklist: judge must have complete(prompts, **gen) (an OpenAIJudge or LocalJudge), got "
                f"{type(judge).__name__}. Build one from rlpost.rewards.judges or pass its options as a dict."
            )
        if not isinstance(num_questions, int) or num_questions < 1:
            raise ValueError(f"checklist: num_questions must be an integer >= 1, got {num_questions!r}.")
        if answer_mode not in ("each", "joint"):
            raise ValueError(f"checklist: answer_mode must be 'each' or 'joint', got {answer_mode!r}.")
        if target not in ("completion", "image"):
            raise ValueError(f"checklist: target must be 'completion' or 'image', got {target!r}.")
        if image_format not in ("auto", "openai", "object"):
            raise ValueError(f"checklist: image_format must be 'auto', 'openai' or 'object', got {image_format!r}.")
        if answer_prompt is None:
            answer_prompt = DEFAULT_ANSWER_PROMPT if answer_mode == "each" else DEFAULT_JOINT_ANSWER_PROMPT
        self._check_template("question_prompt", question_prompt, {"instruction", "num_questions"},
                             {"source_note"})
        item = "question" if answer_mode == "each" else "questions"
        self._check_template("answer_prompt", answer_prompt, {item, "response"}, {"instruction"})
        if image_format == "auto":
            from rlpost.rewards.judges.local import LocalJudge

            image_format = "object" if isinstance(judge, LocalJudge) else "openai"
        self.requires = ("prompt", target)
        super().__init__(**options)
        self.judge = judge
        self.num_questions = num_questions
        self.question_prompt = question_prompt
        self.answer_prompt = answer_prompt
        self.answer_mode = answer_mode
        self.target = target
        self.source_image_field = source_image_field
        self.image_format = image_format
        self.gen = dict(gen or {})
        self.cache: MutableMapping[str, list[str]] | None = (
            ({} if cache else None) if isinstance(cache, bool) else cache
        )
        self._cache_lock = threading.Lock()

    @staticmethod
    def _build_judge(options: dict[str, Any]) -> Any:
        from rlpost.rewards.judges import build_judge

        return build_judge(options)

    @staticmethod
    def _check_template(name: str, template: str, needed: set[str], allowed: set[str]) -> None:
        found = _placeholders(template)
        missing, unknown = needed - found, found - needed - allowed
        if missing or unknown:
            raise ValueError(
                f"checklist: {name} must use the placeholders {sorted(needed)} (optional: {sorted(allowed)}); "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}. Write literal braces as '{{{{' and '}}}}'."
            )

    # -- message building ------------------------------------------------------------------------------------------
    def _message(self, text: str, images: Sequence[tuple[str, Any]]) -> str | list[dict[str, Any]]:
        return judge_message(text, images, self.image_format)

    # -- scoring ---------------------------------------------------------------------------------------------------
    def _questions_for(self, requests: dict[str, tuple[str, Any]], metrics: dict[str, float]) -> dict[str, list[str]]:
        """Question lists for each cache key (``key -> (instruction, source image)``); failed keys are absent."""
        found: dict[str, list[str]] = {}
        with self._cache_lock:
            for key in requests:
                if self.cache is not None and key in self.cache:
                    found[key] = list(self.cache[key])
        metrics["question_cache_hits"] = len(found)
        todo = [key for key in requests if key not in found]
        prompts = []
        for key in todo:
            instruction, source = requests[key]
            text = self.question_prompt.format(instruction=instruction, num_questions=self.num_questions,
                                               source_note=_SOURCE_NOTE if source is not None else "")
            prompts.append(self._message(text, [("Source image:", source)]))
        answers = self.judge.complete(prompts, **self.gen) if prompts else []
        for key, answer in zip(todo, answers, strict=True):
            if answer is None:
                metrics["judge_failures"] += 1
                continue
            questions = parse_questions(answer, self.num_questions)
            if questions is None:
                metrics["parse_failures"] += 1
                continue
            found[key] = questions
            if self.cache is not None:
                with self._cache_lock:
                    self.cache[key] = list(questions)
        return found

    def score_batch(self, batch: dict[str, list], group_ids: list[int]) -> RewardOutput:
        n = len(group_ids)
        sources = batch.get(self.source_image_field) or [None] * n
        metrics: dict[str, float] = {"judge_failures": 0, "parse_failures": 0}

        # 1. one checklist per group, keyed by its first member's prompt text and source image
        first: dict[Any, int] = {}
        for i, group in enumerate(group_ids):
            first.setdefault(group, i)
        key_of: dict[Any, str] = {}
        requests: dict[str, tuple[str, Any]] = {}
        for group, i in first.items():
            key = hashlib.sha256(f"{batch['prompt'][i]}\x00{_image_key(sources[i])}".encode()).hexdigest()
            key_of[group] = key
            requests.setdefault(key, (batch["prompt"][i], sources[i]))
        questions = self._questions_for(requests, metrics)
        lists = [questions.get(key_of[g]) for g in group_ids]
        if questions:
            metrics["questions"] = sum(len(q) for q in questions.values()) / len(questions)

        # 2. answer every sample's checklist in one judge call (the judge runs the prompts concurrently)
        prompts: list[Any] = []
        owners: list[int] = []
        for i, qs in enumerate(lists):
            if qs is None:
                continue
            response = as_text(batch["completion"][i]) if self.target == "completion" else _IMAGE_RESPONSE
            images = [("Source image:", sources[i])]
            if self.target == "image":
                images.append(("Edited image:", batch["image"][i]))
            items = [dict(question=q) for q in qs] if self.answer_mode == "each" else [
                dict(questions="\n".join(f"{k}. {q}" for k, q in enumerate(qs, 1)))]
            for item in items:
                text = self.answer_prompt.format(instruction=batch["prompt"][i], response=response, **item)
                prompts.append(self._message(text, images))
                owners.append(i)
        replies = self.judge.complete(prompts, **self.gen) if prompts else []

        # 3. verdicts per sample; any missing verdict makes the sample None
        verdicts: list[list[bool | None]] = [[] for _ in range(n)]
        for i, reply in zip(owners, replies, strict=True):
            if reply is None:
                metrics["judge_failures"] += 1
                count = len(lists[i]) if self.answer_mode == "joint" else 1
                verdicts[i] += [None] * count
                continue
            if self.answer_mode == "each":
                parsed: list[bool | None] | None = [extract_yes_no(reply)]
                if parsed[0] is None:
                    metrics["parse_failures"] += 1
            else:
                parsed = _parse_joint_answers(reply, len(lists[i]))
                if parsed is None:
                    metrics["parse_failures"] += 1
                    parsed = [None] * len(lists[i])
            verdicts[i] += parsed

        scores: list[float | None] = []
        for i, qs in enumerate(lists):
            ok = qs is not None and all(v is not None for v in verdicts[i])
            scores.append(sum(verdicts[i]) / len(qs) if ok else None)
        columns = {
            "questions": ["\n".join(qs) if qs else "" for qs in lists],
            "answers": [" ".join("?" if v is None else ("yes" if v else "no") for v in vs) for vs in verdicts],
        }
        return RewardOutput(scores, metrics=metrics, columns=columns)
