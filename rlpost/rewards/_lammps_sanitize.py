"""Static safety checks for model-written LAMMPS input scripts.

Private helper of :mod:`rlpost.rewards.lammps`. It is imported both by the
parent process and, by file path, by the sandboxed worker (which re-checks each
command after LAMMPS has substituted its variables), so it must stay
stdlib-only and must not import anything from ``rlpost``.

Model-written scripts are hostile by assumption. The pass below splits a script
into commands the way LAMMPS does (``&`` continuation, ``\"\"\"`` blocks,
``#`` comments outside quotes, quoted words), then:

* rejects commands that run programs or code (``shell`` other than ``mkdir``,
  ``python``, ``plugin``, ``geturl``, ``mdi``, ``fix imd`` sockets, ``dump
  movie`` which pipes into ffmpeg, ...);
* checks every file argument: literal (no ``$`` substitution, which cannot be
  checked statically), relative, no ``..``, a conservative character set (LAMMPS
  hands compressed file names to ``popen``), no compression suffix, and, once the
  work dir exists, ``os.path.realpath`` inside it;
* rejects absolute paths, ``~`` and ``..`` in *any* word of any command, so that
  file arguments this pass does not know by position are covered too; only
  formulas (equal/atom/vector ``variable`` expressions, the ``if`` condition,
  ``$(...)``) may have a word that starts with ``/``, a division there;
* inlines ``include`` files from the trusted potentials dir after checking them
  the same way, and turns ``label``/``jump SELF``/``log``/``shell mkdir`` into
  actions the worker performs itself;
* applies the run-length cap to literal ``run``/``minimize`` counts (the worker
  applies it again after substitution).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

__all__ = [
    "Command",
    "Problem",
    "ScriptRejected",
    "Sanitized",
    "check_expanded",
    "command_words",
    "index_potentials",
    "sanitize",
    "split_commands",
    "split_words",
    "static_check",
]


class ScriptRejected(ValueError):
    """A script (or one of its commands) failed a safety check."""

    def __init__(self, reason: str, line: int | None = None):
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"{where}{reason}")
        self.reason = reason
        self.line = line


@dataclass
class Command:
    """One LAMMPS command after continuation and comment handling.

    ``action`` tells the worker what to do: ``"lammps"`` (pass ``text`` to
    ``lmp.command``), ``"label"``, ``"jump"`` (``arg`` = label or ``None``),
    ``"mkdir"`` (``arg`` = list of relative dirs), ``"skip"`` (neutralized).
    """

    line: int
    text: str
    action: str = "lammps"
    arg: object = None
    source: str = "script"

    def to_dict(self) -> dict:
        return {"line": self.line, "text": self.text, "action": self.action,
                "arg": self.arg, "source": self.source}


@dataclass
class Sanitized:
    commands: list[Command]
    staged: dict[str, str] = field(default_factory=dict)  # relpath in work dir -> source file
    output_dirs: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- splitting

def split_commands(script: str) -> list[tuple[int, str]]:
    """Split a script into ``(first_line_number, command_text)`` like LAMMPS' reader.

    A line whose last printable character is ``&`` continues on the next line
    (checked before comments are stripped, as LAMMPS does); an odd number of
    ``\"\"\"`` keeps the command open. Comments (``#`` outside quotes) are removed.
    """
    out: list[tuple[int, str]] = []
    lines = script.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    buf, start = "", 0
    for i, raw in enumerate(lines, start=1):
        if not buf:
            start = i
        stripped = raw.rstrip()
        if stripped.endswith("&"):
            buf += stripped[:-1] + " "
            continue
        buf += raw
        if buf.count('"""') % 2 == 1:
            buf += "\n"
            continue
        text = _strip_comment(buf).strip()
        if text:
            out.append((start, text))
        buf = ""
    if buf.strip():
        text = _strip_comment(buf).strip()
        if text:
            out.append((start, text))
    return out


def _strip_comment(text: str) -> str:
    quote = None
    i = 0
    while i < len(text):
        if quote is None:
            if text.startswith('"""', i):
                quote, i = '"""', i + 3
                continue
            c = text[i]
            if c in "\"'":
                quote = c
            elif c == "#":
                return text[:i]
        elif text.startswith(quote, i):
            i += len(quote)
            quote = None
            continue
        i += 1
    return text


def split_words(text: str) -> list[str]:
    """Split a command into words; quoted words keep their quotes (removed by ``_unquote``)."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        j = i
        while j < n and not text[j].isspace():
            if text.startswith('"""', j):
                end = text.find('"""', j + 3)
                j = n if end < 0 else end + 3
            elif text[j] in "\"'":
                end = text.find(text[j], j + 1)
                j = n if end < 0 else end + 1
            else:
                j += 1
        words.append(text[i:j])
        i = j
    return words


def command_words(script: str) -> list[tuple[int, list[str]]]:
    """``(first_line_number, words)`` per command, words unquoted: the commands as LAMMPS reads them, for callers
    that inspect a script (which files it names) without sanitizing it."""
    return [(line, [_unquote(w) for w in split_words(text)]) for line, text in split_commands(script)]


def _unquote(word: str) -> str:
    for q in ('"""', '"', "'"):
        if len(word) >= 2 * len(q) and word.startswith(q) and word.endswith(q):
            return word[len(q):-len(q)]
    return word


# ---------------------------------------------------------------- rules

# Commands that run programs, load code, or open sockets / URLs.
_FORBIDDEN_COMMANDS = {
    "python": "runs Python code", "plugin": "loads a shared library",
    "geturl": "downloads from the network", "mdi": "connects to an external driver",
    "server": "connects to an external client", "message": "opens a socket or file channel",
    "kim": "may download models", "kim_init": "may download models",
    "kim_interactions": "may download models", "kim_query": "queries the network",
    "kim_param": "may download models", "kim_property": "may download models",
    "temper": "needs multiple partitions", "neb": "needs multiple partitions",
    "prd": "needs multiple partitions", "tad": "needs multiple partitions",
    "partition": "executes per-partition commands",
}
_FORBIDDEN_STYLE_PREFIXES = ("python", "mdi", "imd", "ipi", "client", "kim", "plumed")
_COMPRESSED = (".gz", ".bz2", ".zst", ".xz", ".lzma", ".lz4")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.\-+=,@%*/]+$")
# any leading '/' ('//tmp/x' and '/./tmp/x' too), a leading '~', or a '..' component
_ABS_OR_PARENT = re.compile(r"(^/)|(^~)|((^|/)\.\.(/|$))")
# in a formula a leading '/' is a division ('v_srate / 1.0e12'); '~' and '..' are no operators there
_HOME_OR_PARENT = re.compile(r"(^~)|((^|/)\.\.(/|$))")
# variable styles whose arguments LAMMPS parses as a formula, never as a file name; their value is a number (or
# per-atom/vector numbers) when substituted, so it cannot become a path elsewhere either
_FORMULA_VARIABLE_STYLES = {"equal", "atom", "vector"}
_FILE_KEYWORDS = {"file", "append", "out", "overwrite", "infile", "outfile"}
RESERVED_OUTPUTS = {"log.lammps"}
# word index of positional output files of fixes ('fix ID group style ...')
_FIX_OUTPUTS = {"reaxff/species": (7,), "reaxff/bonds": (5,), "tmd": (7,)}
# command -> (word index of its output file, word index of its dump style or None)
_OUTPUT_AT = {"write_data": (1, None), "write_restart": (1, None), "write_coeff": (1, None),
              "write_dump": (3, 2), "dump": (5, 3), "pair_write": (7, None),
              "bond_write": (5, None), "angle_write": (3, None), "dihedral_write": (3, None)}


def _fail(reason: str, line: int) -> None:
    raise ScriptRejected(reason, line)


def _formula_word_indices(words: list[str]) -> range:
    """Indices of the words LAMMPS reads as a formula: the expression of an equal/atom/vector ``variable`` and the
    condition of ``if``."""
    name = _unquote(words[0])
    if name == "variable" and len(words) > 3 and _unquote(words[2]) in _FORMULA_VARIABLE_STYLES:
        return range(3, len(words))
    if name == "if" and len(words) > 1:
        return range(1, 2)
    return range(0)


def _without_immediate_formulas(text: str) -> str:
    """``text`` with each ``$(...)`` span (an immediate formula: LAMMPS replaces it by its number before it splits
    the line into words) read as the number ``0``. Only the spans LAMMPS substitutes: not inside single or triple
    quotes, and none that holds a quote or lacks its closing parenthesis; those stay and are checked as written."""
    out, i, n, in_double = [], 0, len(text), False
    while i < n:
        quote = '"""' if text.startswith('"""', i) else "'" if text[i] == "'" and not in_double else None
        if quote is not None:  # LAMMPS substitutes nothing in these
            end = text.find(quote, i + len(quote))
            end = n if end < 0 else end + len(quote)
            out.append(text[i:end])
            i = end
            continue
        if text[i] == '"':
            in_double = not in_double
        elif text.startswith("$(", i):
            depth, j = 0, i + 1
            while j < n and text[j] not in "\"'":
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            if j < n and depth == 0:
                out.append("0")
                i = j + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _check_all_words(text: str, line: int) -> None:
    # File arguments this pass does not know by position are still covered here; formulas are no file arguments,
    # so a '/' that starts one of their words is a division (MD-EvalBench reference 42: 'v_srate / 1.0e12').
    # LAMMPS replaces '$(...)' before it splits the line into words, spaces inside included: so does this check.
    words = split_words(_without_immediate_formulas(text))
    formulas = _formula_word_indices(words)
    for k, w in enumerate(words):
        pattern = _HOME_OR_PARENT if k in formulas else _ABS_OR_PARENT
        for piece in _unquote(w).split():
            if pattern.search(piece):
                _fail(f"'{piece}' is an absolute path, a home path or contains '..'; "
                      "use a plain relative file name inside the work dir", line)
            if piece.lower().endswith(_COMPRESSED) and not piece.startswith("-"):
                _fail(f"'{piece}' names a compressed file; LAMMPS pipes those through an "
                      "external program, which the sandbox forbids", line)


def _check_path(token: str, line: int, work_dir: str | None, what: str,
                allow_variables: bool = False) -> str | None:
    """Full check of one file argument; returns the path, or None for a deferred one."""
    path = _unquote(token)
    if "$" in path:
        if allow_variables and path == token:
            # unquoted, so the worker sees the substituted name and checks it then
            return None
        _fail(f"{what} '{path}' uses variable substitution, which cannot be checked "
              "before running; write the literal file name (or allow_variable_paths=True "
              "to check it after substitution)", line)
    if not path:
        _fail(f"{what} is empty", line)
    if not _SAFE_PATH.match(path):
        _fail(f"{what} '{path}' has characters outside [A-Za-z0-9_.-+=,@%*/]; "
              "rename the file", line)
    if _ABS_OR_PARENT.search(path) or path.startswith("/"):
        _fail(f"{what} '{path}' must be a relative path inside the work dir (no leading "
              "'/', no '~', no '..')", line)
    if path.lower().endswith(_COMPRESSED):
        _fail(f"{what} '{path}' is compressed; LAMMPS pipes those through an external "
              "program, which the sandbox forbids", line)
    if work_dir is not None:
        root = os.path.realpath(work_dir)
        real = os.path.realpath(os.path.join(root, path))
        if os.path.commonpath([root, real]) != root:
            _fail(f"{what} '{path}' resolves outside the work dir (symlink?)", line)
    # 'a/./b' and 'a/b' must compare equal against reserved and staged names
    return os.path.normpath(path)


@dataclass
class _Ctx:
    work_dir: str | None
    potentials: dict[str, str]  # name a script may use -> trusted source file
    max_run_steps: int | None
    cap_run_steps: bool
    out: Sanitized
    allow_variable_paths: bool = False
    jump_files_as_self: bool = False
    text_filter: bool = True


def _read(ctx: _Ctx, token: str, line: int, what: str = "input file") -> str | None:
    path = _check_path(token, line, ctx.work_dir, what, ctx.allow_variable_paths)
    if path in ctx.potentials:
        ctx.out.staged[path] = ctx.potentials[path]
    return path


def _write(ctx: _Ctx, token: str, line: int, what: str = "output file") -> str | None:
    path = _check_path(token, line, ctx.work_dir, what, ctx.allow_variable_paths)
    if path is None:
        return None
    if path in RESERVED_OUTPUTS or path in ctx.out.staged or path in ctx.potentials:
        _fail(f"{what} '{path}' would overwrite the captured log or a staged input file", line)
    parent = os.path.dirname(path)
    if parent:
        ctx.out.output_dirs.add(parent)
    return path


def _int_literal(word: str) -> int | None:
    try:
        return int(float(_unquote(word)))
    except ValueError:
        return None


def _check_nested(ctx: _Ctx, text: str, line: int) -> None:
    """``if`` branches and ``run every`` commands are executed by LAMMPS itself,
    so the worker cannot re-check them after substitution: forbid ``$`` there."""
    for sub_line, sub in split_commands(_unquote(text)):
        if "$" in sub:
            _fail("commands nested in 'if' or 'run ... every' may not use variable "
                  "substitution ('$'); compute the value first", line)
        cmd = _sanitize_command(ctx, sub, line)
        if cmd.action != "lammps":
            _fail(f"'{split_words(sub)[0]}' is not allowed inside 'if' or 'run ... every'", line)
        if cmd.text != sub:  # LAMMPS runs the original string: a cap cannot be applied
            _fail(f"'{sub}' inside 'if' or 'run ... every' exceeds max_run_steps="
                  f"{ctx.max_run_steps}", line)


def _check_run(ctx: _Ctx, words: list[str], line: int, text: str) -> str:
    n = _int_literal(words[1]) if len(words) > 1 else None
    if n is not None and ctx.max_run_steps is not None and n > ctx.max_run_steps:
        if not ctx.cap_run_steps:
            _fail(f"run of {n} steps exceeds max_run_steps={ctx.max_run_steps}; "
                  "shorten the run or raise the cap", line)
        ctx.out.warnings.append(f"line {line}: run {n} capped to {ctx.max_run_steps}")
        words = [words[0], str(ctx.max_run_steps)] + words[2:]
        text = " ".join(words)
    if "every" in words:
        k = words.index("every")
        for w in words[k + 2:]:
            if w not in ("NULL",):
                _check_nested(ctx, w, line)
    return text


def _check_minimize(ctx: _Ctx, words: list[str], line: int, text: str) -> str:
    if ctx.max_run_steps is None or len(words) < 5:
        return text
    new = list(words)
    for k in (3, 4):
        n = _int_literal(words[k])
        if n is not None and n > ctx.max_run_steps:
            if not ctx.cap_run_steps:
                _fail(f"minimize iteration limit {n} exceeds max_run_steps={ctx.max_run_steps}",
                      line)
            new[k] = str(ctx.max_run_steps)
    if new != words:
        ctx.out.warnings.append(f"line {line}: minimize limits capped to {ctx.max_run_steps}")
        return " ".join(new)
    return text


def _emulated_only(ctx: _Ctx, words: list[str], text: str, line: int) -> Command:
    """``text_filter=False``: only what the worker must emulate (loops, ``quit``); LAMMPS gets the rest as is."""
    name = _unquote(words[0])
    if name == "label" and len(words) == 2:
        return Command(line, text, "label", _unquote(words[1]))
    if name == "jump" and len(words) >= 2 and _unquote(words[1]) == "SELF":
        return Command(line, text, "jump", _unquote(words[2]) if len(words) > 2 else None)
    if name == "next":
        return Command(line, text, "next", [_unquote(w) for w in words[1:]])
    if name == "quit":
        return Command(line, text, "quit")
    return Command(line, text)


def _sanitize_command(ctx: _Ctx, text: str, line: int) -> Command:
    words = split_words(text)
    name = words[0]
    if not ctx.text_filter:
        return _emulated_only(ctx, words, text, line)
    if "$" in name:
        _fail("the command name may not come from a variable", line)
    if name in _FORBIDDEN_COMMANDS:
        _fail(f"'{name}' is forbidden in the sandbox ({_FORBIDDEN_COMMANDS[name]})", line)
    if name == "shell" and not (len(words) >= 3 and words[1] == "mkdir"):
        _fail("'shell' is forbidden in the sandbox (runs programs); only 'shell mkdir DIR' "
              "is emulated", line)
    if name in ("fix", "pair_style", "compute", "dump", "variable", "bond_style"):
        # any position: 'pair_style hybrid ... python ...' names sub-styles later
        for w in words[1:]:
            if _unquote(w).split("/")[0] in _FORBIDDEN_STYLE_PREFIXES:
                _fail(f"style '{_unquote(w)}' is forbidden in the sandbox (runs code or "
                      "opens sockets)", line)
    _check_all_words(text, line)

    if name == "shell":
        if "$" in text:
            _fail("'shell mkdir' directory names must be literal", line)
        dirs = [_write(ctx, w, line, "directory") for w in words[2:]]
        return Command(line, text, "mkdir", dirs)
    if name == "log":
        ctx.out.warnings.append(f"line {line}: 'log' ignored so the captured log stays complete")
        return Command(line, text, "skip")
    if name in ("label", "jump") and "$" in text:
        _fail(f"'{name}' may not use variable substitution", line)
    if name == "label":
        if len(words) != 2:
            _fail("label needs exactly one ID", line)
        return Command(line, text, "label", _unquote(words[1]))
    if name == "jump":
        if len(words) >= 2 and ctx.jump_files_as_self and _unquote(words[1]) != "SELF":
            ctx.out.warnings.append(f"line {line}: 'jump {_unquote(words[1])}' taken as "
                                    "'jump SELF' (jump_files_as_self)")
        elif len(words) < 2 or _unquote(words[1]) != "SELF":
            _fail("only 'jump SELF [label]' is supported in the sandbox; jumping to another "
                  "file would run unchecked commands", line)
        return Command(line, text, "jump", _unquote(words[2]) if len(words) > 2 else None)
    if name == "include":
        if len(words) != 2:
            _fail("include needs exactly one file name", line)
        if "$" in words[1]:
            _fail("include file names must be literal", line)
        return Command(line, text, "include", _read(ctx, words[1], line, "include file"))

    if name in ("read_data", "read_restart", "read_dump", "rerun"):
        if len(words) < 2:
            _fail(f"{name} needs a file name", line)
        _read(ctx, words[1], line)
        if name == "read_data":  # 'file' keyword of read_data is not an output
            return Command(line, text)
    elif name == "molecule":
        for w in words[2:]:
            if not re.match(r"^[-+0-9.eE]+$", w) and w not in (
                    "offset", "toff", "boff", "aoff", "doff", "ioff", "scale", "json"):
                _read(ctx, w, line, "molecule file")
    elif name in ("pair_coeff", "pair_style", "bond_style", "angle_style", "dihedral_style",
                  "improper_style", "bond_coeff", "angle_coeff", "dihedral_coeff",
                  "improper_coeff"):
        for w in words[1:]:
            u = _unquote(w)
            # numbers such as 2.5e-3 strip to nothing; file names keep a dot
            if u in ctx.potentials or "." in u.strip(".0123456789eE+-"):
                _read(ctx, w, line, "potential or table file")
    elif name in _OUTPUT_AT:
        k, style_at = _OUTPUT_AT[name]
        if len(words) <= k:
            _fail(f"{name} needs a file name as word {k + 1}", line)
        if style_at is not None and _unquote(words[style_at]) == "movie":
            _fail("dump style 'movie' pipes into ffmpeg and is forbidden", line)
        _write(ctx, words[k], line)
    elif name == "restart":
        for w in words[2:4]:
            if w not in ("fileper", "nfile"):
                _write(ctx, w, line, "restart file")
    elif name == "variable" and len(words) >= 4 and _unquote(words[2]) in ("file", "atomfile"):
        _read(ctx, words[3], line)
    elif name == "run":
        text = _check_run(ctx, words, line, text)
    elif name == "minimize":
        text = _check_minimize(ctx, words, line, text)
    elif name == "if":
        # if "cond" then "c1" "c2" elif "cond" "c3" else "c4"
        k = 2
        while k < len(words):
            if words[k] == "elif":
                k += 2
                continue
            if words[k] not in ("then", "else"):
                _check_nested(ctx, words[k], line)
            k += 1
    elif name == "package":
        # thread counts would escape the one-core-per-worker budget of the pool
        if not (len(words) > 2 and words[1] == "omp" and words[2] in ("0", "1")):
            _fail("'package' may only be 'package omp 0|1' in the sandbox (one thread per "
                  "worker)", line)
    elif name == "next":
        return Command(line, text, "next", [_unquote(w) for w in words[1:]])
    elif name == "quit":
        return Command(line, text, "quit")
    elif name == "fix" and len(words) >= 4:
        style = _unquote(words[3])
        if style == "tmd" and len(words) > 5:
            _read(ctx, words[5], line)
        for k in _FIX_OUTPUTS.get(style, ()):
            if k < len(words):
                _write(ctx, words[k], line)
    # keyword-introduced files (print, fix print, fix ave/*, balance, info, ...)
    for k, w in enumerate(words[:-1]):
        if w in _FILE_KEYWORDS and name not in ("read_data", "variable"):
            _write(ctx, words[k + 1], line)
    return Command(line, text)


def sanitize(script: str, *, work_dir: str | None = None,
             potentials: dict[str, str] | None = None,
             max_run_steps: int | None = None, cap_run_steps: bool = False,
             allow_variable_paths: bool = False, jump_files_as_self: bool = False,
             max_include_depth: int = 4, text_filter: bool = True) -> Sanitized:
    """Check a whole script and return the commands the worker should execute.

    ``potentials`` maps the names a script may use (``Cu_u3.eam`` and
    ``potentials/Cu_u3.eam``) to trusted source files; referenced ones are listed
    in ``Sanitized.staged`` for copying into the work dir. ``allow_variable_paths``
    (default False, as issue 6 asks) defers unquoted file names built from
    variables to the worker's check after substitution instead of rejecting them;
    such names are never staged and their directories are not pre-created.
    ``jump_files_as_self`` (default False) reads ``jump FILE [label]`` as ``jump SELF
    [label]``: scripts written as ``in.x`` often jump to their own file name, which
    the sandbox cannot know. ``text_filter=False`` checks nothing and passes every
    command except the loop emulation to LAMMPS (to test the kernel boundary alone).
    Raises :class:`ScriptRejected` with the offending line on the first violation.
    """
    ctx = _Ctx(work_dir, dict(potentials or {}), max_run_steps, cap_run_steps,
               Sanitized(commands=[]), allow_variable_paths, jump_files_as_self, text_filter)
    if not script or not script.strip():
        raise ScriptRejected("script is empty")
    _sanitize_into(ctx, script, "script", max_include_depth)
    if not any(c.action == "lammps" for c in ctx.out.commands):
        raise ScriptRejected("script is empty (no LAMMPS commands)")
    return ctx.out


def _sanitize_into(ctx: _Ctx, script: str, source: str, depth_left: int,
                   problems: list[Problem] | None = None) -> None:
    """Sanitize ``script`` into ``ctx.out``. With ``problems`` (the top-level script only), a rejected command is
    recorded there and the pass goes on with the next one instead of raising."""
    if "\x00" in script:
        raise ScriptRejected("script contains a NUL byte")
    for line, text in split_commands(script):
        try:
            cmd = _sanitize_command(ctx, text, line)
        except ScriptRejected as e:
            if source != "script":
                raise ScriptRejected(f"in include file {source}: {e.reason}", line) from None
            if problems is None:
                raise
            problems.append(Problem(e.line, e.reason))
            continue
        cmd.source = source
        if cmd.action == "include":
            src = ctx.potentials.get(cmd.arg)
            reason = (f"include file '{cmd.arg}' is not in the potentials dir; only trusted files can be included"
                      if src is None else "include files nested too deeply" if depth_left <= 0 else None)
            if reason is not None:
                if problems is None:
                    _fail(reason, line)
                problems.append(Problem(line, reason))
                continue
            try:
                with open(src, encoding="utf-8", errors="replace") as f:
                    _sanitize_into(ctx, f.read(), cmd.arg, depth_left - 1)
            except ScriptRejected as e:
                if problems is None:
                    raise
                problems.append(Problem(e.line, e.reason))
            continue
        ctx.out.commands.append(cmd)


@dataclass(frozen=True)
class Problem:
    """One reason :func:`static_check` rejects a script: the script line (None for the whole script) and why."""

    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}" if self.line is not None else self.reason


def index_potentials(directory: str | os.PathLike | None) -> dict[str, str]:
    """The trusted potential files of ``directory`` (top level): ``{name: real path, "potentials/" + name: real
    path}``, the two ways a script may name one. A symlink that leaves the directory is skipped: it would smuggle
    any file into the sandbox. Raises ``ValueError`` when ``directory`` is not a directory."""
    if directory is None:
        return {}
    root = os.path.realpath(directory)
    if not os.path.isdir(root):
        raise ValueError(f"potentials_dir {str(directory)!r} is not a directory; pass an "
                         "existing directory of potential files or None")
    index = {}
    for name in sorted(os.listdir(root)):
        real = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, real]) != root or not os.path.isfile(real):
            continue
        index[name] = real
        index[f"potentials/{name}"] = real
    return index


def static_check(script: str, *, potentials_dir: str | os.PathLike | None = None,
                 max_run_steps: int | None = None, cap_run_steps: bool = False,
                 allow_variable_paths: bool = False, jump_files_as_self: bool = False,
                 max_include_depth: int = 4) -> list[Problem]:
    """Every problem the sandbox's static pass finds in ``script``, in script order; empty when it would run.

    The same rules as :func:`sanitize` (and so as :class:`rlpost.rewards.lammps.LammpsExecutor`, given the same
    options), but without a work dir and without stopping at the first rejected command, so that a syntax pass
    (``md_runtime``) can report all of them to a model in one round instead of one per round. Never raises for a
    bad script; ``ValueError`` only for a ``potentials_dir`` that is not a directory.
    """
    if not isinstance(script, str):
        return [Problem(None, f"script must be a string, got {type(script).__name__}")]
    if not script.strip():
        return [Problem(None, "script is empty")]
    ctx = _Ctx(None, index_potentials(potentials_dir), max_run_steps, cap_run_steps,
               Sanitized(commands=[]), allow_variable_paths, jump_files_as_self)
    problems: list[Problem] = []
    try:
        _sanitize_into(ctx, script, "script", max_include_depth, problems)
    except ScriptRejected as e:  # the whole-script checks (a NUL byte)
        problems.append(Problem(e.line, e.reason))
    if not problems and not any(c.action == "lammps" for c in ctx.out.commands):
        problems.append(Problem(None, "script is empty (no LAMMPS commands)"))
    return problems


def check_expanded(text: str, line: int, *, work_dir: str | None,
                   max_run_steps: int | None, cap_run_steps: bool) -> tuple[str, list[str]]:
    """Re-check one command after LAMMPS variable substitution (worker side).

    Returns the (possibly run-capped) command text and any warnings; raises
    :class:`ScriptRejected` if the substituted command is unsafe. Staging is not
    repeated: a file name that only appears after substitution must already exist.
    """
    ctx = _Ctx(work_dir, {}, max_run_steps, cap_run_steps, Sanitized(commands=[]))
    cmd = _sanitize_command(ctx, text, line)
    if cmd.action != "lammps":
        _fail(f"'{split_words(text)[0]}' produced by variable substitution is not allowed",
              line)
    return cmd.text, ctx.out.warnings
