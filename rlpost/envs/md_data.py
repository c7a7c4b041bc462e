"""Loader for MD-EvalBench-format data (MDAgent2, arXiv 2601.02075; issue 6 item 6).

MD-EvalBench (``FredericVAN/PKU_MDAgent2`` ``MD_Benchmark/``, HF ``FredericFan/MD-EvalBench``)
ships, per language (``EN``/``ZH``):

* ``Code_Eval/LammpsCodeGenEval_sub.json``: a JSON list of ``{"task", "standrd_code"}``
  (the authors' spelling; ``standard_code`` is accepted too);
* ``QA_Eval/LAMMPS-SyntaxEval_total.jsonl`` and ``QA_Eval/MD-KnowledgeEval_total.jsonl``:
  one item per line, ``id, type, question, options, answer, answer_text, difficulty, tags``
  with ``type`` in ``single_choice | multiple_choice | fill_blank | open_qa``.

Answer and code fields are stored as ``"BASE64:<base64 of a JSON value>"``. They are
decoded here, in memory only: the authors ask that decoded data not be redistributed,
so nothing in this module writes it anywhere.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BASE64_PREFIX",
    "QA_TYPES",
    "MDCodeTask",
    "MDQAItem",
    "MDEvalBench",
    "MDDataError",
    "decode_field",
    "load_codegen_tasks",
    "load_qa_items",
    "load_md_evalbench",
]

BASE64_PREFIX = "BASE64:"
QA_TYPES = ("single_choice", "multiple_choice", "fill_blank", "open_qa")
_CODE_KEYS = ("standrd_code", "standard_code", "code", "solution")
_CODEGEN_FILE = Path("Code_Eval") / "LammpsCodeGenEval_sub.json"
_QA_FILES = {"syntax": Path("QA_Eval") / "LAMMPS-SyntaxEval_total.jsonl",
             "knowledge": Path("QA_Eval") / "MD-KnowledgeEval_total.jsonl"}


class MDDataError(ValueError):
    """A file is not in MD-EvalBench format; the message names the file and the item."""


def decode_field(value: Any) -> Any:
    """Decode a ``"BASE64:<b64(json)>"`` string; any other value is returned unchanged."""
    if not (isinstance(value, str) and value.startswith(BASE64_PREFIX)):
        return value
    try:
        return json.loads(base64.b64decode(value[len(BASE64_PREFIX):], validate=True))
    except (binascii.Error, ValueError) as e:
        raise MDDataError(f"field starts with {BASE64_PREFIX!r} but is not base64 of JSON: {e}") \
            from None


@dataclass(frozen=True)
class MDCodeTask:
    """One code-generation task: a natural-language ``task`` and its reference script."""

    index: int
    task: str
    reference_code: str | None

    def to_record(self) -> dict:
        """``{"prompt", "answer"}`` row for a prompt dataset (answer = reference script)."""
        return {"prompt": self.task, "answer": self.reference_code, "index": self.index}


@dataclass(frozen=True)
class MDQAItem:
    """One QA item. ``answer`` is the list of correct option letters (choice types) or
    None; ``answer_text`` the reference text (fill-blank, open QA) or None."""

    id: str
    type: str
    question: str
    options: dict[str, str] | None
    answer: list[str] | None
    answer_text: str | None
    difficulty: str | None = None
    tags: tuple[str, ...] = ()
    subset: str | None = None

    def to_record(self) -> dict:
        return {"id": self.id, "type": self.type, "question": self.question,
                "options": self.options, "answer": self.answer,
                "answer_text": self.answer_text, "subset": self.subset}


@dataclass
class MDEvalBench:
    codegen: list[MDCodeTask] = field(default_factory=list)
    syntax_qa: list[MDQAItem] = field(default_factory=list)
    knowledge_qa: list[MDQAItem] = field(default_factory=list)


def load_codegen_tasks(path: str | os.PathLike) -> list[MDCodeTask]:
    """Read a ``LammpsCodeGenEval``-style JSON list (or JSONL) of tasks."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(rows, dict):
        rows = [rows]
    if not isinstance(rows, list):
        raise MDDataError(f"{path}: expected a JSON list of tasks, got {type(rows).__name__}")
    tasks = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("task"), str):
            raise MDDataError(f"{path}: item {i} has no string 'task' field")
        code = next((row[k] for k in _CODE_KEYS if k in row), None)
        code = decode_field(code)
        if code is not None and not isinstance(code, str):
            raise MDDataError(f"{path}: item {i} reference code decodes to "
                              f"{type(code).__name__}, expected a string")
        tasks.append(MDCodeTask(index=i, task=row["task"], reference_code=code))
    return tasks


def load_qa_items(path: str | os.PathLike, subset: str | None = None) -> list[MDQAItem]:
    """Read an MD-EvalBench QA JSONL file, decoding ``BASE64:`` answers."""
    path = Path(path)
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MDDataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        for key in ("id", "type", "question"):
            if key not in row:
                raise MDDataError(f"{path}:{n}: missing field {key!r}")
        if row["type"] not in QA_TYPES:
            raise MDDataError(f"{path}:{n}: unknown type {row['type']!r}; expected one of "
                              f"{', '.join(QA_TYPES)}")
        answer = decode_field(row.get("answer"))
        if isinstance(answer, str):
            answer = [answer]
        items.append(MDQAItem(
            id=str(row["id"]), type=row["type"], question=row["question"],
            options=row.get("options") or None,
            # open_qa items store [] when only a reference text exists
            answer=list(answer) if answer else None,
            answer_text=decode_field(row.get("answer_text")),
            difficulty=row.get("difficulty"), tags=tuple(row.get("tags") or ()),
            subset=subset))
    return items


def load_md_evalbench(root: str | os.PathLike, lang: str = "EN") -> MDEvalBench:
    """Load the three subsets from ``root/<lang>/`` (the published folder layout)."""
    base = Path(root) / lang
    if not base.is_dir():
        raise MDDataError(f"{base} does not exist; pass the md_evalbench folder that holds "
                          "EN/ and ZH/")
    return MDEvalBench(
        codegen=load_codegen_tasks(base / _CODEGEN_FILE),
        syntax_qa=load_qa_items(base / _QA_FILES["syntax"], subset="syntax"),
        knowledge_qa=load_qa_items(base / _QA_FILES["knowledge"], subset="knowledge"))
