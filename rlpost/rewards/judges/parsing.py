"""Read structured answers out of free judge text: JSON objects (with repair), yes/no verdicts and numeric scores.

Pure functions, no model and no I/O. LLM judges wrap their answers in prose, markdown fences and bold markers, and
write near-JSON (Python literals, single quotes, trailing commas); the ThinkRL-Edit and MDAgent2 codebases both lean
on ``json_repair``-style fallbacks plus regex extraction for this (``specs/thinkrl-edit.md`` §5), which is what these
functions do without the extra dependency. Every function returns ``None`` when it cannot read an answer, never a
guess, so a caller can count the parse failure.
"""

from __future__ import annotations

import json
import re
from typing import Literal

__all__ = ["extract_json", "extract_score", "extract_yes_no", "iter_json_objects", "repair_json"]

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|json5|javascript|js|python|py)?[ \t]*\n?(.*?)```", re.DOTALL)
_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}
_JSON_LITERALS = ("true", "false", "null")
_IDENT_START = re.compile(r"[A-Za-z_$]")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\-]")


def _balanced_spans(text: str) -> list[tuple[int, int]]:
    """Spans ``[start, end)`` of top-level balanced ``{...}`` objects, skipping braces inside quoted strings.

    After a span closes, the scan resumes after it, so nested objects are not reported on their own. An unclosed
    ``{`` (truncated output) yields no span: a truncated verdict is not repaired into a partial one.
    """
    spans = []
    i = 0
    while True:
        start = text.find("{", i)
        if start < 0:
            return spans
        depth, quote, j = 0, None, start
        while j < len(text):
            ch = text[j]
            if quote:
                if ch == "\\":
                    j += 1
                elif ch == quote:
                    quote = None
            elif ch in "\"'":
                # an apostrophe inside prose (``it's``) is not a string opener; only quotes after a JSON delimiter are
                prev = text[start:j].rstrip()[-1:]
                if ch == '"' or prev in ("{", "[", ",", ":"):
                    quote = ch
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    spans.append((start, j + 1))
                    break
            j += 1
        else:
            return spans
        i = j + 1


def repair_json(text: str) -> str:
    """Rewrite near-JSON into JSON: single-quoted strings, unquoted keys, Python ``True``/``False``/``None`` and
    trailing commas. Valid JSON passes through unchanged (up to whitespace around removed commas).

    Args:
        text: one JSON-ish value, e.g. ``"{'a': True, b: [1, 2,],}"``.

    Returns:
        The repaired text, e.g. ``'{"a": true, "b": [1, 2]}'``; it may still fail ``json.loads`` if the input was
        not near-JSON at all.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "\"'":
            # re-emit the string double-quoted, re-escaping what JSON needs
            j, chars = i + 1, []
            while j < n and text[j] != ch:
                if text[j] == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    chars.append("'" if nxt == "'" else "\\" + nxt)
                    j += 2
                    continue
                chars.append('\\"' if text[j] == '"' else text[j])
                j += 1
            out.append('"' + "".join(chars).replace("\n", "\\n") + '"')
            i = j + 1
        elif ch == ",":
            k = i + 1
            while k < n and text[k].isspace():
                k += 1
            if k < n and text[k] in "}]":  # trailing comma
                i += 1
                continue
            out.append(ch)
            i += 1
        elif _IDENT_START.match(ch):
            j = i + 1
            while j < n and _IDENT_CHAR.match(text[j]):
                j += 1
            word = text[i:j]
            k = j
            while k < n and text[k].isspace():
                k += 1
            if k < n and text[k] == ":" and word not in _JSON_LITERALS:
                out.append(json.dumps(word))  # unquoted key
            else:
                out.append(_PY_LITERALS.get(word, word))
            i = j
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _load_object(candidate: str) -> dict | None:
    for text in (candidate, repair_json(candidate)):
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            continue
        return value if isinstance(value, dict) else None
    return None


def iter_json_objects(text: str | None):
    """Every top-level balanced ``{...}`` span of ``text`` that parses to an object (repaired if near-JSON), in
    order of appearance; for callers that choose among several objects by their keys."""
    for start, end in _balanced_spans(text or ""):
        value = _load_object(text[start:end])
        if value is not None:
            yield value


def extract_json(text: str | None, prefer: Literal["first", "last"] = "first") -> dict | None:
    """The JSON object a judge answered with, or None.

    Search order: the content of fenced code blocks (```json ... ``` or plain ```), then balanced ``{...}`` spans
    of the whole text, then the whole text. Each candidate is parsed as JSON and, failing that, after
    :func:`repair_json`. Only objects count: a bare list or number is not an answer here.

    Args:
        text: the judge's output (None reads as no answer).
        prefer: which object to take when several parse. ``"first"`` (default, as the issue specifies) suits
            answer-first prompts; ``"last"`` suits reason-then-answer prompts whose reasoning may quote examples.
            [inferred: the spec does not say which; both official codebases take the first match]

    Returns:
        The parsed dict, or None when nothing parses to an object (truncated JSON is not completed).
    """
    if not text:
        return None
    if prefer not in ("first", "last"):
        raise ValueError(f"extract_json: prefer must be 'first' or 'last', got {prefer!r}.")
    fenced: list[str] = []
    for block in _FENCE.findall(text):
        fenced += [block[a:b] for a, b in _balanced_spans(block)] or [block.strip()]
    spans = [text[a:b] for a, b in _balanced_spans(text)]
    if prefer == "last":
        fenced, spans = fenced[::-1], spans[::-1]
    for candidate in [*fenced, *spans, text.strip()]:
        value = _load_object(candidate)
        if value is not None:
            return value
    return None


# a yes/no word with no letter, digit, apostrophe, hyphen or underscore touching it ("yesterday", "know", "no-op"
# and "don't" are not answers; "Yes.", "**No**", "(yes)" are)
_WORD_EDGE_L = r"(?<![A-Za-z0-9_'\-])"
_WORD_EDGE_R = r"(?![A-Za-z0-9_'\-])"
_YES_NO = re.compile(_WORD_EDGE_L + r"(yes|no)" + _WORD_EDGE_R, re.IGNORECASE)
_MARKED_YES_NO = re.compile(
    r"(?:final\s+answer|answer|verdict|judge?ment|decision|output)\s*[*_]*\s*(?:[:=\-]|is)\s*[*_\"'`\s]*"
    r"(yes|no)" + _WORD_EDGE_R,
    re.IGNORECASE,
)


def extract_yes_no(text: str | None) -> bool | None:
    """A judge's yes/no verdict: True for yes, False for no, None when there is none.

    An explicit marker wins ("Answer: yes", "**Verdict:** No", "the answer is yes"; the last one when several
    appear, since a judge may restate the question before answering). Otherwise the first standalone ``yes``/``no``
    word counts, case-insensitive and through markdown (``**No**``, ``Yes.``); words that merely contain them
    ("yesterday", "know", "nothing") do not.

    Args:
        text: the judge's output (None reads as no verdict).
    """
    if not text:
        return None
    marked = _MARKED_YES_NO.findall(text)
    word = marked[-1] if marked else None
    if word is None:
        match = _YES_NO.search(text)
        word = match.group(1) if match else None
    return None if word is None else word.lower() == "yes"


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_LABELLED_SCORE = re.compile(
    r"(?:score|rating|grade|points?)\s*[*_]*\s*(?:[:=]|is|of)?\s*[*_\"'`\s]*(" + _NUMBER + r")",
    re.IGNORECASE,
)
_OUT_OF = re.compile(r"(" + _NUMBER + r")\s*(?:/|out\s+of)\s*(" + _NUMBER + r")", re.IGNORECASE)
_BARE = re.compile(r"^[\s*_`\"'(\[]*(" + _NUMBER + r")[\s*_`\"')\].]*$")
_ANY_NUMBER = re.compile(r"(?<![\w.])(" + _NUMBER + r")(?![\w])")


def extract_score(
    text: str | None, lo: float, hi: float, *, any_number: bool = False
) -> float | None:
    """A numeric score in ``[lo, hi]`` from a judge's answer, or None.

    Patterns, in order: a labelled score ("Score: 7", "rating = 4.5", "**Score:** 8"; the last label wins, as in
    :func:`extract_yes_no`); a fraction whose denominator is ``hi`` ("7/10", "4 out of 5"); an answer that is only a
    number ("8", "**8**."). A found score outside ``[lo, hi]`` gives None rather than a clipped value, since an
    out-of-range answer means the judge misread the scale.

    Args:
        text: the judge's output (None reads as no score).
        lo: lowest valid score.
        hi: highest valid score.
        any_number: fall back to the first number in ``[lo, hi]`` anywhere in the text. Off by default because
            prose numbers ("fixes 2 bugs") would become scores. [inferred: the issue does not fix this policy]
    """
    if lo > hi:
        raise ValueError(f"extract_score: lo must be <= hi, got lo={lo}, hi={hi}.")
    if not text:
        return None
    found: float | None = None
    labelled = _LABELLED_SCORE.findall(text)
    if labelled:
        found = float(labelled[-1])
    if found is None:
        for value, denominator in _OUT_OF.findall(text):
            if float(denominator) == float(hi):
                found = float(value)
                break
    if found is None:
        bare = _BARE.match(text)
        if bare:
            found = float(bare.group(1))
    if found is None and any_number:
        for value in _ANY_NUMBER.findall(text):
            if lo <= float(value) <= hi:
                return float(value)
    if found is None or not lo <= found <= hi:
        return None
    return found

