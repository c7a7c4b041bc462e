"""Pull a script out of a model completion: JSON ``{"code": ...}``, fenced code blocks, or raw text.

MDAgent2's generator is told to answer with JSON ``{"code", "checkout_filename_list"}``; its runtime also accepts a
```` ```lammps ````, ```` ```json ```` or bare ```` ``` ```` fence (``utils/common_utils.py``, spec mdagent2.md §4.2
step 1). Completions in the wild mix all three and often think aloud first, so :func:`find_script` tries, in order:

1. a JSON object holding a string ``code`` (the whole text, a ```` ```json ```` fence, or the last ``{...}`` in the
   text that parses);
2. the last fenced block tagged with one of ``languages`` (default ``lammps``, ``lmp``, ``in``);
3. the last untagged fenced block;
4. the raw text, when ``raw=True`` and it reads as a script (see :func:`looks_like_lammps`).

Qwen3-style ``<think>...</think>`` sections are dropped first, so a draft inside the reasoning never wins over the
answer. The last block wins over the first because models put the final version last (an inferred choice).
Pure stdlib, no LAMMPS needed: other rewards (syntax QA, judges) share it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

__all__ = ["ExtractedScript", "extract_script", "find_script", "json_objects", "looks_like_lammps"]

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
# an unclosed <think> (generation cut off) hides everything after it
_OPEN_THINK = re.compile(r"<think>.*\Z", re.DOTALL | re.IGNORECASE)
# ``` or ~~~ fences; the info string's first word is the language tag
_FENCE = re.compile(r"^[ \t]*(?P<fence>```|~~~)[ \t]*(?P<lang>[\w+.\-/]*)[^\n]*\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$",
                    re.DOTALL | re.MULTILINE)
# commands that open or shape nearly every LAMMPS input; enough to tell a script from prose
_LAMMPS_COMMANDS = frozenset("""
units atom_style dimension boundary lattice region create_box create_atoms read_data read_restart mass pair_style
pair_coeff bond_style angle_style velocity fix unfix compute thermo thermo_style thermo_modify timestep run minimize
dump dump_modify neighbor neigh_modify variable group displace_atoms write_data write_restart kspace_style
min_style reset_timestep include label jump next print log clear atom_modify processors special_bonds
""".split())


@dataclass
class ExtractedScript:
    """A script found in a completion.

    Attributes:
        code: the script text (stripped).
        source: where it came from: ``"json"``, ``"fence"`` (a tagged block), ``"fence_untagged"`` or ``"raw"``.
        files: ``checkout_filename_list`` from MDAgent2's JSON answer (output files the model promised), else [].
    """

    code: str
    source: str
    files: list[str] = field(default_factory=list)


def looks_like_lammps(text: str, min_fraction: float = 0.5) -> bool:
    """True when at least ``min_fraction`` of the non-blank, non-comment lines start with a LAMMPS command.

    Used to accept raw (unfenced) completions without mistaking prose for a script.
    """
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return False
    hits = sum(ln.split()[0] in _LAMMPS_COMMANDS for ln in lines)
    return hits >= 1 and hits / len(lines) >= min_fraction


def json_objects(text: str) -> list[dict]:
    """Every top-level JSON object embedded in ``text`` (prose, fences and other text around them are skipped).

    Objects nested inside a found object are not listed separately, so callers see whole answers.
    """
    decoder = json.JSONDecoder()
    objects, pos = [], 0
    while (start := text.find("{", pos)) != -1:
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            pos = start + 1
            continue
        if isinstance(obj, dict):
            objects.append(obj)
        pos = end
    return objects


def _json_code(text: str) -> ExtractedScript | None:
    """The last JSON object in ``text`` with a string ``code`` member."""
    found = None
    for obj in json_objects(text):
        if isinstance(obj.get("code"), str) and obj["code"].strip():
            files = obj.get("checkout_filename_list")
            files = [str(f) for f in files] if isinstance(files, list) else []
            found = ExtractedScript(obj["code"].strip(), "json", files)
    return found


def find_script(text: str | None, *, raw: bool = True,
                languages: tuple[str, ...] = ("lammps", "lmp", "in")) -> ExtractedScript | None:
    """The script in a completion, or None when there is none (see the module docstring for the order).

    Args:
        text: the completion text (use :func:`rlpost.rewards.as_text` for chat messages). None reads as "".
        raw: accept the whole text when nothing else matched and it looks like a script (default True).
        languages: fence tags that mark the script (compared lowercased).
    """
    if not text:
        return None
    text = _OPEN_THINK.sub("", _THINK.sub("", text))
    found = _json_code(text)
    if found is not None:
        return found
    tagged, untagged = None, None
    for m in _FENCE.finditer(text):
        body, lang = m.group("body").strip(), m.group("lang").lower()
        if not body:
            continue
        if lang in languages:
            tagged = body
        elif not lang:
            untagged = body
    if tagged is not None:
        return ExtractedScript(tagged, "fence")
    if untagged is not None:
        return ExtractedScript(untagged, "fence_untagged")
    if raw and looks_like_lammps(text):
        return ExtractedScript(text.strip(), "raw")
    return None


def extract_script(text: str | None, *, raw: bool = True) -> str | None:
    """Just the script text of :func:`find_script` (None when the completion holds no script)."""
    found = find_script(text, raw=raw)
    return None if found is None else found.code
