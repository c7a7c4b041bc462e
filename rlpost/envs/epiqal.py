"""EpiQAL (arXiv 2601.03471; ``specs/epiqal.md``): multi-answer epidemiological QA over PLOS NTD articles.

:func:`load_epiqal` reads the released JSON files (a file, a folder of them, or a checkout of github.com/myweiii/EpiQAL)
and returns one record per item with the chat ``prompt`` of the official evaluation (``func.py::evaluation_prompt``):
a system instruction per subset and CoT mode, the fixed format demo (a toy Atlanta/Florida passage and its answer
``{"results": ["1"]}``), then the item as ``Passage / Question / Options``.

What the prompt holds, and why:

- **Only the question stem**: ``question["Question"]`` (A, and the ``sample40`` files of B and C) or
  ``question["Revised Question"]`` (B, C), or ``question`` itself where the file stores a string. The released code
  formats the whole ``question`` field, and in the released A file that dict carries ``Evidence`` and ``Rationale``,
  i.e. the answer; top-level ``evidence`` / ``rationale`` / ``discussion`` fields of the human-eval files are never
  shown either (``tests/test_epiqal.py`` checks every released item).
- **C without its Discussion**: the C subset asks for conclusions of the withheld Discussion; a ``---Discussion---``
  section left in a passage is cut (to the next ``---Section---`` header or the end).
- **Whitespace**: the official prompt strings carry the source file's indentation; rlpost dedents them (same words,
  same line structure). Reproduced numbers can differ slightly for that reason (``specs/epiqal.md`` §1.3 open point).
- **Files without passages** (``*.qa_noparagraph.json``, ``sample40``): ``missing_passage="error"`` (default) refuses
  them with the fix; ``"omit"`` builds a closed-book prompt without the Passage block (not the benchmark's setting).
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["SUBSETS", "epiqal_messages", "load_epiqal", "prompt_text", "question_stem", "strip_discussion"]

SUBSETS = ("A", "B", "C")

_CONTRACT = ('Output a JSON object with a single key "results" whose value is a list of index strings for all correct '
             "options. If no option is correct, the list should be empty.")
_MULTI = ("The question is multi-choice style. There may be one correct answer, multiple correct answers, or no correct "
          "answer.")
_C_BODY = ("Answer the question using the provided Passage Body. The Passage Body contains all sections of the paper "
           "except the Discussion.")

# System instructions of the official evaluation, per subset and mode (EpiQAL-{A,B,C}/0_shot/scripts/func.py).
_SYSTEM = {
    ("A", False): ["You are an expert in epidemiology. Answer the retrieval-based question using the provided passage.",
                   f"{_MULTI} Select all options whose answers can be directly found in the passage."],
    ("A", True): ["You are an expert in epidemiology. Answer the question using the provided passage.",
                  f"{_MULTI} You must evaluate each option independently.", "",
                  "Follow these steps:",
                  "Step 1: Read the passage and question carefully.",
                  "Step 2: For each option, locate information in the passage that is relevant to the option.",
                  "Step 3: Determine whether the option matches information explicitly stated in the passage and "
                  "correctly answers the specific question asked.",
                  "Step 4: Collect the indices of all correct options. If no option is correct, return an empty list."],
    ("B", False): ["You are an expert in epidemiology. Answer the question based on the provided passage and your "
                   "epidemiological knowledge.",
                   f"{_MULTI} Select all correct answers. Some options may require combining passage evidence with "
                   "epidemiological principles."],
    ("B", True): ["You are an expert in epidemiology. Answer the question based on the provided passage and your "
                  "epidemiological knowledge.",
                  f"{_MULTI} You must evaluate each option independently.", "",
                  "Follow these steps:",
                  "Step 1: Read the passage and question carefully.",
                  "Step 2: For each option, reason through whether it correctly answers the question. Some options "
                  "require multi-step reasoning that combines evidence from the passage with epidemiological "
                  "principles.",
                  "Step 3: A correct option must be supported by passage evidence and represent valid epidemiological "
                  "reasoning. An incorrect option may contain methodological errors, misinterpret the evidence, or "
                  "require information not available in the passage.",
                  "Step 4: Decide whether each option is correct or incorrect.",
                  "Step 5: Collect the indices of all correct options. If no option is correct, return an empty list."],
    ("C", False): [f"You are an expert in epidemiology. {_C_BODY}",
                   f"{_MULTI} Select all conclusions that can be logically derived from the Passage Body."],
    ("C", True): [f"You are an expert in epidemiology. {_C_BODY}",
                  f"{_MULTI} You must evaluate each option independently.", "",
                  "Follow these steps:",
                  "Step 1: Read the Passage Body and question carefully.",
                  "Step 2: For each option, determine whether it can be logically derived from the evidence in the "
                  "Passage Body by applying general epidemiological principles.",
                  "Step 3: A correct option must be derivable from the Passage Body but should not be explicitly "
                  "stated there verbatim. It represents a valid conclusion or interpretation of the evidence.",
                  "Step 4: An incorrect option either requires external information not in the Passage Body, makes "
                  "unsupported speculative claims, or misinterprets the evidence.",
                  "Step 5: Collect the indices of all correct options. If no option is correct, return an empty list."],
}

_DEMO_PASSAGE = (
    "During the winter, Atlanta reported increased COVID 19 transmission, with seventy two new cases identified over "
    "two weeks.\nThe source of these cases remains undetermined. Earlier this month, Florida also reported an outbreak "
    "of fifty cases linked to community transmission.\nThe two locations have frequent travel between them, and "
    "preliminary interviews suggest that several Atlanta cases had visited Florida within the previous fourteen days."
)
_DEMO_QUESTION = ("According to preliminary interviews mentioned in the text, which location had several of the "
                  "Atlanta cases visited within the previous fourteen days?")
_DEMO_OPTIONS = [{"Index": "0", "Option": "Atlanta"}, {"Index": "1", "Option": "Florida"}]
_DEMO_ANSWER = '{"results": ["1"]}'
RETRY_NOTE = "Your last response contained several issues. Ensure they are not repeated in the next response."

_SECTION = re.compile(r"^---\s*([^-\n][^\n]*?)\s*---\s*$", re.MULTILINE)


def _block(label: str, body: str) -> str:
    return f"{label}:\n    {{\n{textwrap.indent(body, '        ')}\n    }}"


def _user_turn(passage: str | None, stem: str, options: str) -> str:
    blocks = [] if passage is None else [_block("Passage", passage)]
    return "\n".join([*blocks, _block("Question", stem), _block("Options", options)])


def question_stem(item: dict[str, Any]) -> str:
    """The question text alone: ``Question`` or ``Revised Question`` of a dict ``question``, or the string itself."""
    question = item.get("question")
    if isinstance(question, str):
        return question
    if isinstance(question, dict):
        for key in ("Revised Question", "Question"):
            if isinstance(question.get(key), str):
                return question[key]
        raise ValueError(f"item {item.get('idx')!r}: its question dict has neither 'Question' nor 'Revised Question' "
                         f"(keys {sorted(question)}).")
    raise ValueError(f"item {item.get('idx')!r}: 'question' must be a string or a dict, got {type(question).__name__}.")


def strip_discussion(passage: str) -> str:
    """``passage`` without a ``---Discussion---`` section (up to the next ``---Section---`` header or the end)."""
    headers = list(_SECTION.finditer(passage))
    for i, header in enumerate(headers):
        if header.group(1).strip().lower() == "discussion":
            end = headers[i + 1].start() if i + 1 < len(headers) else len(passage)
            return (passage[: header.start()] + passage[end:]).rstrip()
    return passage


def epiqal_messages(item: dict[str, Any], cot: bool = False, retry_error: str | None = None) -> list[dict[str, str]]:
    """The official chat prompt for a loaded item (``subset``, ``question``, ``passage``, ``choices``).

    ``retry_error``: the problem with the previous reply, appended to the system prompt as the released code does on
    its retries."""
    system = [*_SYSTEM[(item["subset"], bool(cot))], "", _CONTRACT]
    if retry_error:
        system += ["", RETRY_NOTE, retry_error]
    demo = _user_turn(_DEMO_PASSAGE, _DEMO_QUESTION, json.dumps(_DEMO_OPTIONS, indent=4))
    return [
        {"role": "system", "content": "\n".join(system)},
        {"role": "user", "content": demo},
        {"role": "assistant", "content": _DEMO_ANSWER},
        {"role": "user", "content": _user_turn(item["passage"], item["question"], json.dumps(item["choices"]))},
    ]


def _subset_of(path: Path) -> str | None:
    match = re.search(r"EpiQAL-([ABC])", path.name)
    return match.group(1) if match else None


def _files(path: Path, subset: str | None) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"EpiQAL path {str(path)!r} does not exist: give a released JSON file, a folder of "
                                "them, or a checkout of github.com/myweiii/EpiQAL.")
    wanted = [subset] if subset else list(SUBSETS)
    found = []
    for s in wanted:
        official = path / f"EpiQAL-{s}" / f"EpiQAL-{s}.json"  # the repository's layout
        found += [official] if official.is_file() else sorted(path.glob(f"EpiQAL-{s}*.json"))
    if not found:
        raise FileNotFoundError(f"No EpiQAL-{subset or '{A,B,C}'}*.json under {path}.")
    return found


def load_epiqal(path: str | Path, subset: str | None = None, cot: bool = False,
                missing_passage: str = "error") -> list[dict[str, Any]]:
    """Items of the released EpiQAL files as records with the official ``prompt`` (chat messages).

    Args:
        path: a released JSON file (``EpiQAL-A.json``, ``EpiQAL-C.human_eval_sample20.json``, ...), a folder of them,
            or a checkout of the official repository (``EpiQAL-{A,B,C}/EpiQAL-{A,B,C}.json``).
        subset: ``"A"``, ``"B"`` or ``"C"``; read from the file name when None. Given for a folder, only that subset.
        cot: the chain-of-thought system instruction instead of the direct one.
        missing_passage: ``"error"`` (default) or ``"omit"``; see the module docstring.

    Each record: ``idx``, ``subset``, ``question`` (the stem), ``passage`` (None when the file has none), ``choices``
    (as in the file), ``ref_answers`` (index strings), ``prompt`` and ``source`` (the file).
    """
    if subset is not None and subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}.")
    if missing_passage not in ("error", "omit"):
        raise ValueError(f"missing_passage must be 'error' or 'omit', got {missing_passage!r}.")
    records = []
    for file in _files(Path(path), subset):
        file_subset = _subset_of(file) or subset
        if file_subset is None:
            raise ValueError(f"{file}: cannot tell the subset from the name; pass subset='A', 'B' or 'C'.")
        if subset is not None and file_subset != subset:
            raise ValueError(f"{file} is EpiQAL-{file_subset}, not the requested subset {subset}.")
        items = json.loads(file.read_text())
        if not isinstance(items, list):
            raise ValueError(f"{file}: expected a JSON list of items, got {type(items).__name__}.")
        for item in items:
            passage = item.get("paragraph")
            if passage is None and missing_passage == "error":
                raise ValueError(
                    f"{file.name} item {item.get('idx')!r} has no passage ('paragraph'): the benchmark reads the "
                    f"article. Use the full release (EpiQAL-{file_subset}/EpiQAL-{file_subset}.json) or pass "
                    "missing_passage='omit' for a closed-book prompt.")
            if passage is not None and file_subset == "C":
                passage = strip_discussion(passage)
            gold = item.get("ref_answers")
            if not isinstance(gold, list):
                raise ValueError(f"{file.name} item {item.get('idx')!r}: ref_answers must be a list, got {gold!r}.")
            record = {"idx": str(item.get("idx")), "subset": file_subset, "question": question_stem(item),
                      "passage": passage, "choices": item["choices"], "ref_answers": [str(a) for a in gold],
                      "source": str(file)}
            record["prompt"] = epiqal_messages(record, cot=cot)
            records.append(record)
    return records


def prompt_text(messages: Sequence[dict[str, str]]) -> str:
    """All message contents joined (what a leak check reads)."""
    return "\n".join(m["content"] for m in messages)
