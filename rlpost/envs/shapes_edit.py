"""Shapes editing: synthetic image-editing tasks with a programmatic pixel judge (ThinkRL-Edit, issue 5 item 5).

A scene is a ``grid × grid`` board of cells (``cell × cell`` pixels each) on a black background; an occupied cell
holds one shape (``square``: the whole cell; ``circle``: the cell without its four corner pixels) in one palette
colour (red, green, blue, yellow). Default 3×3 cells of 4 px: 12×12 images, small enough to learn on CPU.

Edits: **recolour**, **move** (to an empty cell), **add** (into an empty cell), **remove**. Every task carries two
phrasings of the same edit:

Canonical grammar (explicit; rows and columns count from 1, top-left is row 1, column 1)::

    recolour the <shape> in row <r>, column <c> to <colour>
    move the <shape> in row <r>, column <c> to row <r2>, column <c2>
    add a <colour> <shape> in row <r>, column <c>
    remove the <shape> in row <r>, column <c>

Indirect grammar (needs grounding in the source image, and world knowledge for colours)::

    paint <ref> the colour of <thing>          (recolour)
    move <ref> to <place>                      (move)
    add a <shape> the colour of <thing> to <place>   (add)
    remove <ref>                               (remove)
    <ref>    := the <position> shape | the <colour> <shape> | the shape <relation> the <colour> <shape>
    <place>  := the <position> cell | the cell <relation> the <colour> <shape>
    <position> := top-left | top-middle | top-right | middle-left | centre | middle-right | bottom-left | ... (3×3)
    <relation> := left of | right of | above | below
    <thing>  := grass (green) | the sky (blue) | a ripe tomato (red) | a lemon (yellow)

``<colour> <shape>`` references are only generated when unique in the scene. Parsing both forms back to a canonical
spec is :func:`parse_instruction` (the source scene resolves indirect references).

:class:`ShapesJudge` implements the judge ``complete()`` protocol, so ``ChecklistReward(judge=ShapesJudge(),
target="image")`` works unchanged: for the checklist's question prompt it parses the instruction (either form, grounded
on the attached source image) and writes yes/no questions in a fixed, self-contained grammar; for an answer prompt
it reads the cells of the attached edited image (and of the source image for the "unchanged" question). Two more
pixel rewards cover ThinkRL-Edit's other dimensions: :class:`ShapesConsistency` (unedited cells preserved vs the
source) and :class:`ShapesQuality` (pixels close to a clean palette colour).

Splits: a task's *combination* is (operation, colour, target cell); held-out tasks use combinations never seen in
training (``(op + colour + cell) % heldout_mod == 0``) while every operation, colour and cell on its own is seen.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlpost.rewards.base import RewardModule
from rlpost.rewards.checklist import ChecklistReward
from rlpost.rewards.judges.base import BaseJudge
from rlpost.rewards.registry import register_reward

__all__ = [
    "BACKGROUND",
    "COLOURS",
    "OPS",
    "SHAPES",
    "ShapesChecklist",
    "ShapesConsistency",
    "ShapesEditTask",
    "ShapesJudge",
    "ShapesQuality",
    "checklist_questions",
    "describe_scene",
    "parse_instruction",
    "reflect_on_edit",
    "read_scene",
    "render_scene",
]

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0),
}
BACKGROUND = (0.0, 0.0, 0.0)
SHAPES = ("square", "circle")
OPS = ("recolour", "move", "add", "remove")
THINGS = {"green": "grass", "blue": "the sky", "red": "a ripe tomato", "yellow": "a lemon"}
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}
_ROW_NAMES = ("top", "middle", "bottom")
_COL_NAMES = ("left", "middle", "right")

Cell = tuple[int, int]  # 0-based (row, column)
Scene = dict[Cell, tuple[str, str]]  # cell -> (shape, colour)


# ----------------------------------------------------------------------------------------------- scenes ↔ pixels


def _shape_mask(shape: str, cell: int) -> Tensor:
    mask = torch.ones(cell, cell, dtype=torch.bool)
    if shape == "circle":
        for r, c in ((0, 0), (0, cell - 1), (cell - 1, 0), (cell - 1, cell - 1)):
            mask[r, c] = False
    elif shape != "square":
        raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}.")
    return mask


def render_scene(scene: Mapping[Cell, tuple[str, str]], grid: int = 3, cell: int = 4) -> Tensor:
    """The scene as an image ``[3, grid·cell, grid·cell]`` in [0, 1]."""
    image = torch.tensor(BACKGROUND).view(3, 1, 1).repeat(1, grid * cell, grid * cell)
    for (r, c), (shape, colour) in scene.items():
        mask = _shape_mask(shape, cell)
        block = image[:, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
        block[:, mask] = torch.tensor(COLOURS[colour]).view(3, 1)
    return image


def _palette() -> tuple[list[str], Tensor]:
    names = ["background", *COLOURS]
    return names, torch.tensor([BACKGROUND, *COLOURS.values()])  # [K, 3]


def _nearest(rgb: Tensor, max_distance: float) -> str | None:
    """Palette name nearest to ``rgb [3]`` ('background' included), None if farther than ``max_distance``."""
    names, palette = _palette()
    d = (palette - rgb).norm(dim=1)
    k = int(d.argmin())
    return names[k] if float(d[k]) <= max_distance else None


def read_cell(image: Tensor, r: int, c: int, cell: int = 4, max_distance: float = 0.35) -> tuple[str, str] | None:
    """What a cell holds, read from pixels: None (empty), or (shape, colour) where either may be "unclear".

    The colour is the nearest palette colour to the mean of the centre (the pixels every shape covers), accepted
    within ``max_distance`` (RGB Euclidean); the shape is "square" when the corner pixels are closer to that colour
    than to the background, else "circle".
    """
    block = image[:, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]
    lo, hi = cell // 4, cell - cell // 4
    centre = block[:, lo:hi, lo:hi].reshape(3, -1).mean(1)
    name = _nearest(centre, max_distance)
    if name == "background":
        return None
    corners = torch.stack([block[:, 0, 0], block[:, 0, -1], block[:, -1, 0], block[:, -1, -1]]).mean(0)
    to_colour = float((corners - centre).norm())
    to_background = float((corners - torch.tensor(BACKGROUND)).norm())
    shape = "square" if to_colour < to_background else "circle"
    return shape, (name or "unclear")


def read_scene(image: Any, grid: int = 3, cell: int = 4, max_distance: float = 0.35) -> dict[Cell, tuple[str, str]]:
    """Every occupied cell of an image (see :func:`read_cell`)."""
    from rlpost.rewards.image import to_image_tensor

    x = to_image_tensor(image)
    if x.shape[1:] != (grid * cell, grid * cell):
        raise ValueError(f"shapes image must be {grid * cell}x{grid * cell} (grid {grid}, cell {cell} px), got "
                         f"{tuple(x.shape[1:])}.")
    scene = {}
    for r in range(grid):
        for c in range(grid):
            found = read_cell(x, r, c, cell, max_distance)
            if found is not None:
                scene[(r, c)] = found
    return scene


# ----------------------------------------------------------------------------------------------- instructions


def _pos(cell: Cell) -> str:
    return f"row {cell[0] + 1}, column {cell[1] + 1}"


def _position_name(cell: Cell) -> str:
    r, c = cell
    if (r, c) == (1, 1):
        return "centre"
    return f"{_ROW_NAMES[r]}-{_COL_NAMES[c]}"


def _position_cell(name: str) -> Cell | None:
    if name == "centre":
        return (1, 1)
    parts = name.split("-")
    if len(parts) == 2 and parts[0] in _ROW_NAMES and parts[1] in _COL_NAMES:
        return _ROW_NAMES.index(parts[0]), _COL_NAMES.index(parts[1])
    return None


def describe_scene(scene: Mapping[Cell, tuple[str, str]]) -> str:
    """The scene in the canonical grammar's words, row by row: ``"scene: row 1, column 2: red square; ..."``."""
    return "scene: " + "; ".join(f"{_pos(cell)}: {colour} {shape}"
                                 for cell, (shape, colour) in sorted(scene.items())) + "."


def canonical_instruction(spec: Mapping[str, Any]) -> str:
    op, (r, c) = spec["op"], tuple(spec["cell"])
    if op == "recolour":
        return f"recolour the {spec['shape']} in {_pos((r, c))} to {spec['colour']}"
    if op == "move":
        return f"move the {spec['shape']} in {_pos((r, c))} to {_pos(tuple(spec['to']))}"
    if op == "add":
        return f"add a {spec['colour']} {spec['shape']} in {_pos((r, c))}"
    if op == "remove":
        return f"remove the {spec['shape']} in {_pos((r, c))}"
    raise ValueError(f"unknown op {op!r}; ops are {OPS}.")


def _unique(scene: Scene, shape: str, colour: str) -> Cell | None:
    cells = [k for k, v in scene.items() if v == (shape, colour)]
    return cells[0] if len(cells) == 1 else None


def _ref_options(scene: Scene, cell: Cell, grid: int) -> list[str]:
    """Every indirect way to refer to the shape in ``cell`` that resolves uniquely in ``scene``."""
    shape, colour = scene[cell]
    options = [f"the {_position_name(cell)} shape"] if grid == 3 else []
    if _unique(scene, shape, colour) == cell:
        options.append(f"the {colour} {shape}")
    options += _relation_refs(scene, cell, "shape")
    return options


def _relation_refs(scene: Scene, cell: Cell, noun: str) -> list[str]:
    out = []
    for relation, (dr, dc) in RELATIONS.items():
        anchor = (cell[0] - dr, cell[1] - dc)  # cell = anchor + offset
        if anchor in scene and _unique(scene, *scene[anchor]) == anchor:
            a_shape, a_colour = scene[anchor]
            out.append(f"the {noun} {relation} the {a_colour} {a_shape}")
    return out


def _place_options(scene: Scene, cell: Cell, grid: int) -> list[str]:
    options = [f"the {_position_name(cell)} cell"] if grid == 3 else []
    return options + _relation_refs(scene, cell, "cell")


def indirect_instruction(spec: Mapping[str, Any], scene: Scene, rng: random.Random, grid: int = 3) -> str:
    """One indirect phrasing of ``spec`` (random among the unique references), following the module grammar."""
    op, cell = spec["op"], tuple(spec["cell"])
    if op == "recolour":
        return f"paint {rng.choice(_ref_options(scene, cell, grid))} the colour of {THINGS[spec['colour']]}"
    if op == "move":
        return f"move {rng.choice(_ref_options(scene, cell, grid))} to " \
               f"{rng.choice(_place_options(scene, tuple(spec['to']), grid))}"
    if op == "add":
        return f"add a {spec['shape']} the colour of {THINGS[spec['colour']]} to " \
               f"{rng.choice(_place_options(scene, cell, grid))}"
    return f"remove {rng.choice(_ref_options(scene, cell, grid))}"


_POS = r"row (\d+),? column (\d+)"
_SHAPE = r"(square|circle)"
_COLOUR = r"(red|green|blue|yellow)"
_CANONICAL = [
    ("recolour", re.compile(rf"^recolou?r the {_SHAPE} in {_POS} to {_COLOUR}$")),
    ("move", re.compile(rf"^move the {_SHAPE} in {_POS} to {_POS}$")),
    ("add", re.compile(rf"^add an? {_COLOUR} {_SHAPE} in {_POS}$")),
    ("remove", re.compile(rf"^remove the {_SHAPE} in {_POS}$")),
]
_THING = "|".join(re.escape(t) for t in THINGS.values())
_REF = r"the (?:shape|cell) (?:left of|right of|above|below) the \w+ \w+|the [\w-]+ (?:shape|cell)|the \w+ \w+"
_INDIRECT = [
    ("recolour", re.compile(rf"^paint ({_REF}) the colou?r of ({_THING})$")),
    ("move", re.compile(rf"^move ({_REF}) to ({_REF})$")),
    ("add", re.compile(rf"^add an? {_SHAPE} the colou?r of ({_THING}) to ({_REF})$")),
    ("remove", re.compile(rf"^remove ({_REF})$")),
]


def _resolve(ref: str, scene: Scene, grid: int) -> Cell | None:
    """The cell an indirect reference names in ``scene`` (None if it does not resolve uniquely)."""
    m = re.fullmatch(r"the (shape|cell) (left of|right of|above|below) the (\w+) (\w+)", ref)
    if m:
        anchor = _unique(scene, m.group(4), m.group(3))
        if anchor is None:
            return None
        dr, dc = RELATIONS[m.group(2)]
        cell = (anchor[0] + dr, anchor[1] + dc)
        return cell if 0 <= cell[0] < grid and 0 <= cell[1] < grid else None
    m = re.fullmatch(r"the ([\w-]+) (shape|cell)", ref)
    if m and _position_cell(m.group(1)) is not None:
        return _position_cell(m.group(1))
    m = re.fullmatch(r"the (\w+) (\w+)", ref)
    if m and m.group(1) in COLOURS and m.group(2) in SHAPES:
        return _unique(scene, m.group(2), m.group(1))
    return None


def parse_instruction(text: str, scene: Scene | None = None, grid: int = 3) -> dict[str, Any] | None:
    """The canonical spec ``{"op", "cell", "to"?, "shape"?, "colour"?}`` (0-based cells) of an instruction in either
    grammar; indirect references are grounded on ``scene`` (the source). None when it cannot be parsed or grounded.
    """
    text = " ".join(text.strip().lower().rstrip(".").split())
    for op, pattern in _CANONICAL:
        m = pattern.match(text)
        if not m:
            continue
        g = m.groups()
        if op == "recolour":
            spec = {"op": op, "shape": g[0], "cell": [int(g[1]) - 1, int(g[2]) - 1], "colour": g[3]}
        elif op == "move":
            spec = {"op": op, "shape": g[0], "cell": [int(g[1]) - 1, int(g[2]) - 1], "to": [int(g[3]) - 1,
                                                                                          int(g[4]) - 1]}
        elif op == "add":
            spec = {"op": op, "colour": g[0], "shape": g[1], "cell": [int(g[2]) - 1, int(g[3]) - 1]}
        else:
            spec = {"op": op, "shape": g[0], "cell": [int(g[1]) - 1, int(g[2]) - 1]}
        cells = [spec["cell"]] + ([spec["to"]] if "to" in spec else [])
        return spec if all(0 <= v < grid for cell in cells for v in cell) else None
    if scene is None:
        return None
    colour_of = {thing: colour for colour, thing in THINGS.items()}
    for op, pattern in _INDIRECT:
        m = pattern.match(text)
        if not m:
            continue
        if op == "add":
            cell = _resolve(m.group(3), scene, grid)
            return None if cell is None else {"op": op, "shape": m.group(1), "colour": colour_of[m.group(2)],
                                              "cell": list(cell)}
        cell = _resolve(m.group(1), scene, grid)
        if cell is None or cell not in scene:
            return None
        spec = {"op": op, "shape": scene[cell][0], "cell": list(cell)}
        if op == "recolour":
            spec["colour"] = colour_of[m.group(2)]
        elif op == "move":
            to = _resolve(m.group(2), scene, grid)
            if to is None:
                return None
            spec["to"] = list(to)
        return spec
    return None


def edited_cells(spec: Mapping[str, Any]) -> list[Cell]:
    cells = [tuple(spec["cell"])]
    if spec["op"] == "move":
        cells.append(tuple(spec["to"]))
    return cells


def apply_edit(scene: Scene, spec: Mapping[str, Any]) -> Scene:
    out, cell = dict(scene), tuple(spec["cell"])
    if spec["op"] == "recolour":
        out[cell] = (scene[cell][0], spec["colour"])
    elif spec["op"] == "move":
        out[tuple(spec["to"])] = out.pop(cell)
    elif spec["op"] == "add":
        out[cell] = (spec["shape"], spec["colour"])
    else:
        out.pop(cell)
    return out


# ----------------------------------------------------------------------------------------------- checklist


def checklist_questions(spec: Mapping[str, Any], source_scene: Mapping[Cell, tuple[str, str]] | None = None
                        ) -> list[str]:
    """The yes/no questions a correct edit satisfies, each self-contained (answerable from the images alone).

    Order: the edit itself (2-3 questions), one global "unchanged" question (read against the source image), then,
    when the source scene is known, one "is the <colour> <shape> in row r, column c still there?" per shape the edit
    must keep. The per-shape questions give partial credit for partial preservation, so an output that drops the
    whole scene (a blank canvas) cannot score well on "remove" edits [design choice; ThinkRL-Edit's checklists mix
    edit and preservation constraints, spec §3.3].
    """
    op, cell = spec["op"], tuple(spec["cell"])
    others = " and ".join(_pos(c) for c in edited_cells(spec))
    unchanged = f"Are all cells other than {others} unchanged from the source image?"
    if op in ("recolour", "add"):
        items = [f"Is there a {spec['shape']} in {_pos(cell)}?", f"Is the shape in {_pos(cell)} {spec['colour']}?"]
    elif op == "move":
        to = tuple(spec["to"])
        colour = spec.get("source_colour")
        items = [f"Is the cell in {_pos(cell)} empty?", f"Is there a {spec['shape']} in {_pos(to)}?"]
        if colour:
            items.append(f"Is the shape in {_pos(to)} {colour}?")
    else:
        items = [f"Is the cell in {_pos(cell)} empty?"]
    items.append(unchanged)
    edited = set(edited_cells(spec))
    for kept in sorted(k for k in (source_scene or {}) if k not in edited):
        shape, colour = source_scene[kept]
        if colour != "unclear":
            items.append(f"Is there still a {colour} {shape} in {_pos(kept)}?")
    return items


_Q_SHAPE = re.compile(rf"^is there an? {_SHAPE} in {_POS}\?$")
_Q_COLOUR = re.compile(rf"^is the shape in {_POS} {_COLOUR}\?$")
_Q_EMPTY = re.compile(rf"^is the cell in {_POS} empty\?$")
_Q_STILL = re.compile(rf"^is there still an? {_COLOUR} {_SHAPE} in {_POS}\?$")
_Q_SAME = re.compile(r"^are all cells other than (.+) unchanged from the source image\?$")


def answer_question(question: str, image: Any, source: Any, grid: int = 3, cell: int = 4,
                    max_distance: float = 0.35) -> bool | None:
    """Answer one checklist question on an edited image (and the source, for "unchanged"); None if unreadable."""
    q = " ".join(question.strip().lower().split())
    scene = read_scene(image, grid, cell, max_distance)
    m = _Q_SHAPE.match(q)
    if m:
        found = scene.get((int(m.group(2)) - 1, int(m.group(3)) - 1))
        return found is not None and found[0] == m.group(1)
    m = _Q_COLOUR.match(q)
    if m:
        found = scene.get((int(m.group(1)) - 1, int(m.group(2)) - 1))
        return found is not None and found[1] == m.group(3)
    m = _Q_STILL.match(q)
    if m:
        return scene.get((int(m.group(3)) - 1, int(m.group(4)) - 1)) == (m.group(2), m.group(1))
    m = _Q_EMPTY.match(q)
    if m:
        return (int(m.group(1)) - 1, int(m.group(2)) - 1) not in scene
    m = _Q_SAME.match(q)
    if m and source is not None:
        skip = {(int(a) - 1, int(b) - 1) for a, b in re.findall(_POS, m.group(1))}
        before = read_scene(source, grid, cell, max_distance)
        return all(scene.get((r, c)) == before.get((r, c)) for r in range(grid) for c in range(grid)
                   if (r, c) not in skip)
    return None


def reflect_on_edit(instruction: str, source: Any, edited: Any, grid: int = 3, cell: int = 4,
                    max_distance: float = 0.35) -> dict[str, Any] | None:
    """ThinkRL-Edit's reflection step, read from pixels: ``{"detect_difference", "instruction_match",
    "edit_suggestion"}`` (the released reflector's JSON schema) comparing the edited scene with the scene the
    instruction asks for; the suggestion names every wrong cell in the canonical grammar's words. None when the
    instruction cannot be parsed or grounded on the source."""
    before = read_scene(source, grid, cell, max_distance)
    spec = parse_instruction(instruction, before, grid)
    if spec is None:
        return None
    want, got = apply_edit(before, spec), read_scene(edited, grid, cell, max_distance)
    fixes = []
    for r in range(grid):
        for c in range(grid):
            if want.get((r, c)) == got.get((r, c)):
                continue
            if (r, c) in want:
                shape, colour = want[(r, c)]
                fixes.append(f"{_pos((r, c))} should hold a {colour} {shape}")
            else:
                fixes.append(f"{_pos((r, c))} should be empty")
    if not fixes:
        return {"detect_difference": "the edit matches the instruction", "instruction_match": True,
                "edit_suggestion": ""}
    return {"detect_difference": f"{len(fixes)} cell(s) differ from the requested result",
            "instruction_match": False, "edit_suggestion": "; ".join(fixes) + "."}


# ----------------------------------------------------------------------------------------------- the judge


def _decode_image(part: Mapping[str, Any]) -> Any:
    if part.get("type") == "image":
        return part.get("image")
    url = (part.get("image_url") or {}).get("url", "")
    if url.startswith("data:"):
        from PIL import Image

        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    raise ValueError(f"ShapesJudge reads inline images only (data URLs or objects), got {url[:40]!r}.")


def _text_and_images(messages: Sequence[Mapping[str, Any]]) -> tuple[str, Any, Any]:
    """(text, source image, edited image) of a judge conversation; images are labelled by the text part before
    them ("Source image:" / "Edited image:"), else taken in order (source first)."""
    texts, source, edited, label = [], None, None, ""
    for message in messages:
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        for part in parts:
            if part.get("type") == "text":
                label = part.get("text", "")
                texts.append(label)
                continue
            image = _decode_image(part)
            if "source" in label.lower() or (source is None and "edit" not in label.lower()):
                source = image if source is None else source
            else:
                edited = image
    return "\n".join(texts), source, edited


_INSTRUCTION = re.compile(r"Instruction:\s*\n(.+?)(?:\n\s*\n|$)", re.DOTALL)
_QUESTION = re.compile(r"Question:\s*(.+?\?)", re.DOTALL)
_NUMBERED_Q = re.compile(r"^\s*\d+[.)]\s*(.+?\?)\s*$", re.MULTILINE)


class ShapesJudge(BaseJudge):
    """A programmatic checklist judge for the shapes env: it writes and answers questions by reading pixels.

    Speaks the prompts of :class:`rlpost.rewards.checklist.ChecklistReward` (default templates: an ``Instruction:``
    block; answers carry ``Question: ...?`` (``answer_mode="each"``) or numbered questions (``"joint"``)):

    - question prompt → ``{"questions": [...]}`` from :func:`checklist_questions` of the parsed instruction (either
      grammar; indirect references are grounded on the attached source image, whose shapes also get preservation
      questions); None if it cannot be parsed. Up to 3 + 1 + (shapes kept) questions: give ChecklistReward a
      ``num_questions`` that large (:class:`ShapesChecklist` does), or the last preservation questions are cut;
    - answer prompt → ``"yes"`` / ``"no"`` (or ``{"answers": [...]}``) from :func:`answer_question`.
    - reflection prompt (:data:`rlpost.trainers.reasoning_edit.DEFAULT_REFLECT_PROMPT`: an ``Instruction:`` block,
      source and edited images, the ``instruction_match`` schema) → the JSON of :func:`reflect_on_edit`, so
      ``JudgeReflector(ShapesJudge())`` drives ThinkRL-Edit's reflect-and-regenerate step.

    Images arrive as objects (``image_format="object"``) or PNG data URLs (``"openai"``, 8-bit, read with Pillow).
    No answer cache by default: answering is cheap and RL images never repeat.
    """

    model_id = "shapes-pixel-judge"

    def __init__(self, grid: int = 3, cell: int = 4, max_distance: float = 0.35, cache: bool = False) -> None:
        super().__init__(cache=cache)
        self.grid, self.cell, self.max_distance = grid, cell, max_distance

    def _generate(self, conversations, gen):
        return [self._reply(c) for c in conversations]

    def _reply(self, messages) -> str | None:
        try:
            text, source, edited = _text_and_images(messages)
        except ValueError:
            self.stats.add("failures")
            return None
        kw = dict(grid=self.grid, cell=self.cell, max_distance=self.max_distance)
        if "instruction_match" in text and edited is not None:  # the reasoning loop's reflection prompt
            found = _INSTRUCTION.search(text)
            verdict = reflect_on_edit(found.group(1).strip(), source, edited, **kw) if found and source is not None \
                else None
            return None if verdict is None else json.dumps(verdict)
        if "Result:" in text and edited is not None:
            single = _QUESTION.search(text)
            if single:
                verdict = answer_question(single.group(1), edited, source, **kw)
                return None if verdict is None else ("yes" if verdict else "no")
            verdicts = [answer_question(q, edited, source, **kw) for q in _NUMBERED_Q.findall(text)]
            if not verdicts or any(v is None for v in verdicts):
                return None
            return json.dumps({"answers": ["yes" if v else "no" for v in verdicts]})
        m = _INSTRUCTION.search(text)
        if not m:
            return None
        scene = read_scene(source, self.grid, self.cell, self.max_distance) if source is not None else None
        spec = parse_instruction(m.group(1), scene, self.grid)
        if spec is None:
            return None
        if spec["op"] == "move" and scene is not None and tuple(spec["cell"]) in scene:
            spec["source_colour"] = scene[tuple(spec["cell"])][1]
        return json.dumps({"questions": checklist_questions(spec, scene)})


@register_reward("shapes_checklist")
class ShapesChecklist(ChecklistReward):
    """:class:`ChecklistReward` with a :class:`ShapesJudge` on images, so a recipe can name it without a judge."""

    description = "Shapes env checklist: pixel-reading ShapesJudge questions/answers, score = fraction answered yes."

    def __init__(self, grid: int = 3, cell: int = 4, max_distance: float = 0.35, **options: Any) -> None:
        options.setdefault("num_questions", grid * grid + 3)  # every question the judge writes (at most 12 for 3x3)
        options.setdefault("target", "image")
        options.setdefault("image_format", "object")
        super().__init__(ShapesJudge(grid, cell, max_distance), **options)


# ----------------------------------------------------------------------------------------------- other dimensions


def _cell_mask(cells: Sequence[Cell], grid: int, cell: int) -> Tensor:
    mask = torch.ones(grid * cell, grid * cell, dtype=torch.bool)
    for r, c in cells:
        mask[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = False
    return mask


@register_reward("shapes_consistency")
class ShapesConsistency(RewardModule):
    """Visual consistency: unedited cells preserved, ``1 − min(1, mean |edited − source| / tolerance)`` over the
    pixels outside the task's edited cells (ThinkRL-Edit's consistency dimension, computed from pixels) [inferred
    scorer: the paper's is unknown]. Needs ``source_image`` and the ``task`` spec of the record."""

    description = "Shapes env: unedited cells preserved, 1 - mean|edited - source| / tolerance outside the edit."
    requires = ("image", "source_image", "task")

    def __init__(self, grid: int = 3, cell: int = 4, tolerance: float = 0.25, **options: Any) -> None:
        super().__init__(**options)
        self.grid, self.cell, self.tolerance = grid, cell, tolerance

    def score_one(self, sample: Mapping[str, Any]) -> float | None:
        from rlpost.rewards.image import to_image_tensor

        if sample.get("task") is None or sample.get("source_image") is None:
            return None
        image, source = to_image_tensor(sample["image"]), to_image_tensor(sample["source_image"])
        mask = _cell_mask(edited_cells(sample["task"]), self.grid, self.cell)
        diff = (image - source).abs()[:, mask].mean()
        return 1.0 - min(1.0, float(diff) / self.tolerance)


@register_reward("shapes_quality")
class ShapesQuality(RewardModule):
    """Perceptual quality: every pixel close to a clean palette colour, ``mean_px max(0, 1 − d_min / tolerance)``
    with d_min the RGB distance to the nearest palette colour or the background [inferred scorer]."""

    description = "Shapes env: pixels near a clean palette colour, mean max(0, 1 - distance / tolerance)."
    requires = ("image",)

    def __init__(self, tolerance: float = 0.5, **options: Any) -> None:
        super().__init__(**options)
        self.tolerance = tolerance

    def score_one(self, sample: Mapping[str, Any]) -> float | None:
        from rlpost.rewards.image import to_image_tensor

        pixels = to_image_tensor(sample["image"]).reshape(3, -1).T  # [P, 3]
        d = torch.cdist(pixels, _palette()[1]).min(dim=1).values
        return float((1 - d / self.tolerance).clamp(min=0).mean())


# ----------------------------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class ShapesEditTask:
    """Synthetic image-editing tasks (recolour / move / add / remove coloured shapes) with a pixel judge.

    Args:
        grid: cells per side (the indirect grammar's position names need 3).
        cell: pixels per cell side (>= 4 so a circle differs from a square).
        num_train: training tasks. num_heldout: held-out tasks (unseen (op, colour, cell) combinations).
        min_shapes / max_shapes: shapes in a source scene.
        heldout_mod: a combination is held out when ``(op + colour + cell index) % heldout_mod == 0``.
        instruction: which phrasing goes to ``prompt``: "canonical" (default), "indirect" or "mixed" (alternating).
        seed: seeds the scenes and phrasings.
        scene_context: add a ``context`` field describing the source scene in words (:func:`describe_scene`), for a
            text-only planner in the reasoning loop (ThinkRL-Edit's planner is a VLM that sees the source image;
            this is the text stand-in) [inferred]. Off by default: the editor alone never reads it.
        pretrain_steps / pretrain_batch_size / pretrain_learning_rate: the supervised flow-matching warm start on the
            training tasks' (source, target) pairs that the recipe loader runs before RL (0 = none).
    """

    grid: int = 3
    cell: int = 4
    num_train: int = 256
    num_heldout: int = 64
    min_shapes: int = 2
    max_shapes: int = 5
    heldout_mod: int = 5
    instruction: str = "canonical"
    seed: int = 0
    scene_context: bool = False
    pretrain_steps: int = 0
    pretrain_batch_size: int = 32
    pretrain_learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        if self.instruction not in ("canonical", "indirect", "mixed"):
            raise ValueError(f"instruction must be 'canonical', 'indirect' or 'mixed', got {self.instruction!r}.")
        if self.cell < 4 or self.grid < 2:
            raise ValueError(f"shapes_edit needs cell >= 4 px and grid >= 2, got cell={self.cell}, grid={self.grid}.")
        if not 1 <= self.min_shapes <= self.max_shapes < self.grid ** 2:
            raise ValueError(f"need 1 <= min_shapes <= max_shapes < grid^2 = {self.grid ** 2}, got "
                             f"{self.min_shapes}, {self.max_shapes}.")

    @property
    def image_size(self) -> int:
        return self.grid * self.cell

    def is_heldout(self, spec: Mapping[str, Any], colour: str) -> bool:
        target = tuple(spec["to"] if spec["op"] == "move" else spec["cell"])
        key = OPS.index(spec["op"]) + list(COLOURS).index(colour) + target[0] * self.grid + target[1]
        return key % self.heldout_mod == 0

    def _random_task(self, rng: random.Random) -> tuple[Scene, dict[str, Any], str]:
        cells = [(r, c) for r in range(self.grid) for c in range(self.grid)]
        occupied = rng.sample(cells, rng.randint(self.min_shapes, self.max_shapes))
        scene = {cell: (rng.choice(SHAPES), rng.choice(list(COLOURS))) for cell in occupied}
        empty = [c for c in cells if c not in scene]
        op = rng.choice(OPS)
        cell = rng.choice(occupied if op != "add" else empty)
        spec: dict[str, Any] = {"op": op, "cell": list(cell)}
        if op == "recolour":
            spec["shape"] = scene[cell][0]
            spec["colour"] = rng.choice([k for k in COLOURS if k != scene[cell][1]])
            colour = spec["colour"]
        elif op == "move":
            spec["shape"], spec["to"] = scene[cell][0], list(rng.choice(empty))
            colour = scene[cell][1]
        elif op == "add":
            spec["shape"], spec["colour"] = rng.choice(SHAPES), rng.choice(list(COLOURS))
            colour = spec["colour"]
        else:
            spec["shape"] = scene[cell][0]
            colour = scene[cell][1]
        return scene, spec, colour

    def _tasks(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        rng = random.Random(self.seed)
        train, heldout, seen = [], [], set()
        attempts = 0
        while len(train) < self.num_train or len(heldout) < self.num_heldout:
            attempts += 1
            if attempts > 100 * (self.num_train + self.num_heldout):
                raise RuntimeError("shapes_edit could not generate enough distinct tasks; lower num_train/num_heldout.")
            scene, spec, colour = self._random_task(rng)
            key = (tuple(sorted(scene.items())), json.dumps(spec, sort_keys=True))
            if key in seen:
                continue
            seen.add(key)
            bucket = heldout if self.is_heldout(spec, colour) else train
            limit = self.num_heldout if bucket is heldout else self.num_train
            if len(bucket) >= limit:
                continue
            canonical = canonical_instruction(spec)
            indirect = indirect_instruction(spec, scene, rng, self.grid) if self.grid == 3 else canonical
            target = apply_edit(scene, spec)
            form = self.instruction if self.instruction != "mixed" else ("canonical", "indirect")[len(bucket) % 2]
            context = {"context": describe_scene(scene)} if self.scene_context else {}
            bucket.append({
                **context,
                "prompt": canonical if form == "canonical" else indirect,
                "canonical": canonical,
                "indirect": indirect,
                "source_image": render_scene(scene, self.grid, self.cell),
                "target_image": render_scene(target, self.grid, self.cell),
                "task": {**spec, "source_colour": colour if spec["op"] == "move" else None,
                         "edited_cells": [list(c) for c in edited_cells(spec)]},
            })
        return train, heldout

    def split(self, name: str) -> list[dict[str, Any]]:
        """Task records: "train" (also "rl", "sft") or "heldout" (also "test", "eval")."""
        train, heldout = self._tasks()
        if name in ("train", "rl", "sft"):
            return train
        if name in ("heldout", "test", "eval"):
            return heldout
        raise ValueError(f"shapes_edit split must be 'train' or 'heldout', got {name!r}.")

    def corpus(self) -> list[str]:
        """Every instruction of both splits, both phrasings, and the scene descriptions when on (for tokenizers)."""
        train, heldout = self._tasks()
        keys = ("canonical", "indirect", "context") if self.scene_context else ("canonical", "indirect")
        return [r[k] for r in train + heldout for k in keys]
