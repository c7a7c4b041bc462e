"""Kernel-contained execution of untrusted code (model-written LAMMPS scripts, a Python tool, repository tools).

One module for every place rlpost runs code it did not write. A :class:`SandboxPolicy` says what the code may do;
:func:`enter` applies it to the *current* process, irreversibly, with the kernel's own mechanisms; a child process
calls it after its trusted set-up and before it reads untrusted input. :func:`run_python` is the ready-made child: a
fresh interpreter that enters the policy, then reads the untrusted source from stdin and runs it.
:func:`check` reports what this host enforces, probed in a real sandboxed child.

Mechanisms, in the order :func:`enter` applies them (each names itself in errors and reports):

==============  ===================================================================================================
``rlimits``     ``RLIMIT_CPU`` (CPU seconds), ``RLIMIT_AS`` (address space), ``RLIMIT_FSIZE`` (one file's size),
                ``RLIMIT_NOFILE`` (open files), ``RLIMIT_NPROC`` (tasks of the sandbox uid), ``RLIMIT_CORE`` = 0
``uid_drop``    when started as root: the work dir is chowned to a fresh uid/gid (``UID_BASE + pid``, unique among
                live sandboxes), then ``setgroups([])``, ``setresgid``, ``setresuid``; all capabilities are gone
``no_new_privs````PR_SET_NO_NEW_PRIVS``: no setuid binary or file capability can give privileges back
``landlock``    file system (``landlock`` package over the Landlock LSM, ABI >= 1): read-write beneath the work
                dir, read-only beneath ``read_only`` (the Python/LAMMPS installation, system libraries, trusted
                inputs), nothing else - not even reads
``seccomp``     a libseccomp filter (``pyseccomp``): ``execve``/``execveat``/``fork``/``vfork`` and ``clone``
                without ``CLONE_THREAD`` fail with EPERM (threads, e.g. OpenMP, still work; ``clone3`` fails with
                ENOSYS so glibc falls back to ``clone``), ``socket`` fails with EPERM for every address family
                (``socketpair`` stays: it reaches nothing), and ``io_uring`` (which would bypass the filter),
                ``ptrace``, ``process_vm_*``, ``bpf``, ``perf_event_open``, ``userfaultfd``, ``keyctl``, ``mount``,
                ``unshare``/``setns``, ``chroot``/``pivot_root`` fail with EPERM
==============  ===================================================================================================

A mechanism this host lacks makes :func:`enter` raise :class:`SandboxUnavailable` naming it, unless the policy has
``allow_weaker=True`` or the environment sets ``RLPOST_SANDBOX_ALLOW_WEAKER=1``; then the missing ones are skipped,
logged as a warning and listed in :func:`enter`'s return value (callers put them in their results): never silently.

This file is loaded by path inside sandboxed workers started with ``python -I -S`` (no ``rlpost`` import, which may
pull in torch): it must stay standard library at import time; ``landlock`` and ``pyseccomp`` are imported by
:func:`enter` from the directories in ``SandboxPolicy.sys_path``. Threat model: ``docs/sandbox.md``.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import resource
import signal
import sys
from dataclasses import asdict, dataclass, field

# subprocess, tempfile, logging and pathlib are imported where used: a worker loads this file at every start,
# and their import time would count against each script.

__all__ = [
    "MECHANISMS",
    "SandboxPolicy",
    "SandboxResult",
    "SandboxUnavailable",
    "check",
    "enter",
    "kill_group",
    "missing_mechanisms",
    "python_read_paths",
    "run_python",
    "system_read_paths",
]

MECHANISMS = ("rlimits", "uid_drop", "no_new_privs", "landlock", "seccomp")
WEAKER_ENV = "RLPOST_SANDBOX_ALLOW_WEAKER"
# Far above the uids distributions hand out (and below 2**31 so no tool reads them as negative); + pid keeps live
# sandboxes apart, so one cannot signal or read another's files.
UID_BASE = 1_500_000_000
_SYSTEM_READ = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache",
                "/etc/localtime", "/usr/share/zoneinfo")
_DEVICES_RW = ("/dev/null",)
_DEVICES_R = ("/dev/urandom", "/dev/zero")

CLONE_THREAD = 0x00010000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 1, 4, 38, 39
# Denied beside process creation and sockets: each either bypasses the filter (io_uring runs socket/open
# operations without system calls), reaches other processes, or changes what the file system looks like.
_DENIED_EXTRA = ("io_uring_setup", "io_uring_enter", "io_uring_register", "ptrace", "process_vm_readv",
                 "process_vm_writev", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
                 "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_by_handle_at",
                 "name_to_handle_at", "kexec_load", "init_module", "finit_module", "delete_module")


class SandboxUnavailable(RuntimeError):
    """A protection the policy asks for cannot be applied on this host (and the weaker mode was not chosen)."""

    def __init__(self, missing: dict[str, str]):
        self.missing = dict(missing)
        what = "; ".join(f"{name}: {why}" for name, why in self.missing.items())
        super().__init__(f"the sandbox cannot enforce {sorted(self.missing)} on this host ({what}). Run on a Linux "
                         f"kernel with Landlock and seccomp (and libseccomp installed), or accept weaker containment "
                         f"with SandboxPolicy(allow_weaker=True) or {WEAKER_ENV}=1 (see docs/sandbox.md).")


@dataclass
class SandboxPolicy:
    """What sandboxed code may do. Defaults are the strict ones; ``None`` disables a limit.

    Args:
        work_dir: the only directory the code may write (and create files in); also readable. Required by
            :func:`enter` when ``landlock`` is on.
        read_only: directories or files the code may read (and execute from: shared libraries), nothing else.
            :func:`python_read_paths` + :func:`system_read_paths` is what an interpreter needs.
        allow_process_creation: leave ``execve``/``fork``/``clone`` alone (default False).
        allow_network: leave ``socket`` alone (default False).
        cpu_s: ``RLIMIT_CPU`` in seconds (SIGXCPU kills the process past it); default 60.
        memory_mb: ``RLIMIT_AS`` in MiB; default 2048.
        file_size_mb: ``RLIMIT_FSIZE`` in MiB (SIGXFSZ past it); default 256.
        open_files: ``RLIMIT_NOFILE``; default 256.
        nproc: ``RLIMIT_NPROC`` (tasks, threads included, of the sandbox uid; applies only with ``uid_drop``);
            default 64.
        drop_uid: switch to a fresh non-root uid when the process is root (default True).
        uid: that uid (default ``UID_BASE + pid``, fresh per process).
        allow_proc_self: read access to ``/proc/<own pid>`` (default True: threads, the C library and Python read
            their own status; nothing of other processes is readable).
        sys_path: directories appended to ``sys.path`` before ``landlock``/``pyseccomp`` are imported (a worker
            started with ``-S`` has no site-packages); default: where this interpreter finds them.
        libraries: ``{"c": ..., "seccomp": ...}`` shared-library names for ``pyseccomp``, resolved once in the
            parent (default): at import it calls ``ctypes.util.find_library``, which runs ``ldconfig -p`` in a
            subprocess, twice per worker start otherwise.
        allow_weaker: skip (and report) mechanisms this host lacks instead of refusing (default False; the
            ``RLPOST_SANDBOX_ALLOW_WEAKER=1`` environment variable does the same).
        mechanisms: the mechanisms to apply (default all of :data:`MECHANISMS`); leaving one out is an explicit,
            reported choice, for tests that show what a single layer stops.
    """

    work_dir: str | None = None
    read_only: list[str] = field(default_factory=list)
    allow_process_creation: bool = False
    allow_network: bool = False
    cpu_s: float | None = 60.0
    memory_mb: int | None = 2048
    file_size_mb: int | None = 256
    open_files: int | None = 256
    nproc: int | None = 64
    drop_uid: bool = True
    uid: int | None = None
    allow_proc_self: bool = True
    sys_path: list[str] = field(default_factory=lambda: _package_dirs())
    libraries: dict[str, str] = field(default_factory=lambda: dict(_libraries()))
    allow_weaker: bool = False
    mechanisms: list[str] = field(default_factory=lambda: list(MECHANISMS))

    def __post_init__(self):
        unknown = sorted(set(self.mechanisms) - set(MECHANISMS))
        if unknown:
            raise ValueError(f"SandboxPolicy: unknown mechanisms {unknown}; choose from {list(MECHANISMS)}")
        if self.memory_mb is not None and self.memory_mb < 64:
            raise ValueError(f"SandboxPolicy: memory_mb={self.memory_mb} is below what an interpreter needs "
                             "(~64 MiB); use more or None")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SandboxPolicy":
        return cls(**data)

    @property
    def weaker_allowed(self) -> bool:
        return self.allow_weaker or os.environ.get(WEAKER_ENV, "") not in ("", "0")


@functools.lru_cache(maxsize=1)
def _libraries() -> tuple[tuple[str, str], ...]:
    import ctypes.util

    return tuple((name, path) for name in ("c", "seccomp") if (path := ctypes.util.find_library(name)))


@functools.lru_cache(maxsize=1)
def _package_dirs_cached() -> tuple[str, ...]:
    return tuple(_find_package_dirs())


def _package_dirs() -> list[str]:
    return list(_package_dirs_cached())


def _find_package_dirs() -> list[str]:
    """Directories that hold ``landlock`` and ``pyseccomp`` for this interpreter."""
    import importlib.util

    dirs = []
    for name in ("landlock", "pyseccomp"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            origin = os.path.realpath(spec.origin)
            d = os.path.dirname(os.path.dirname(origin) if origin.endswith("__init__.py") else origin)
            if d not in dirs:
                dirs.append(d)
    return dirs


def python_read_paths() -> list[str]:
    """What this interpreter reads at run time: its prefixes (venv and base install) and package dirs."""
    paths = []
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              os.path.dirname(os.path.realpath(sys.executable)), *_package_dirs()):
        for q in (p, os.path.realpath(p)):
            if q and os.path.exists(q) and q not in paths:
                paths.append(q)
    return paths


def system_read_paths() -> list[str]:
    """Shared libraries and the loader cache: what any dynamically linked program reads."""
    return [p for p in _SYSTEM_READ if os.path.exists(p)]


# ---------------------------------------------------------------------------------------------- host probes
def _landlock_abi() -> tuple[int, str | None]:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 0:
        err = ctypes.get_errno()
        return 0, {errno.ENOSYS: "the kernel has no Landlock (CONFIG_SECURITY_LANDLOCK)",
                   errno.EOPNOTSUPP: "Landlock is built in but disabled (add landlock to the lsm= boot option)"
                   }.get(err, f"landlock_create_ruleset failed: {os.strerror(err)}")
    return abi, None


def _import(name: str, policy: SandboxPolicy):
    for d in policy.sys_path:
        if d not in sys.path:
            sys.path.append(d)
    if name == "pyseccomp" and name not in sys.modules and policy.libraries:
        import ctypes.util

        real = ctypes.util.find_library
        ctypes.util.find_library = lambda lib: policy.libraries.get(lib) or real(lib)
        try:
            return __import__(name)
        finally:
            ctypes.util.find_library = real
    return __import__(name)


def missing_mechanisms(policy: SandboxPolicy) -> dict[str, str]:
    """Mechanism -> why it cannot be applied here, for the mechanisms the policy asks for."""
    missing = {}
    wanted = set(policy.mechanisms)
    if not sys.platform.startswith("linux"):
        return {m: f"not Linux ({sys.platform})" for m in wanted}
    if "landlock" in wanted:
        abi, why = _landlock_abi()
        if why:
            missing["landlock"] = why
        else:
            try:
                _import("landlock", policy)
            except ImportError:
                missing["landlock"] = "the 'landlock' package is not installed (pip install 'rlpost[md]')"
        if policy.work_dir is None and "landlock" not in missing:
            raise ValueError("SandboxPolicy.work_dir is required for the landlock mechanism")
    if "seccomp" in wanted:
        try:
            sc = _import("pyseccomp", policy)
            sc.SyscallFilter(defaction=sc.ALLOW)
        except ImportError:
            missing["seccomp"] = "the 'pyseccomp' package is not installed (pip install 'rlpost[md]')"
        except Exception as e:  # noqa: BLE001 - libseccomp missing raises OSError or RuntimeError
            missing["seccomp"] = f"libseccomp cannot be loaded ({e}); install the system package libseccomp2"
    return missing


# ----------------------------------------------------------------------------------------------- entering
def _set_rlimits(policy: SandboxPolicy) -> None:
    def lim(which, value):
        resource.setrlimit(which, (value, value))

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if policy.cpu_s is not None:
        soft = max(1, int(policy.cpu_s + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))  # SIGXCPU at soft, SIGKILL at hard
    if policy.memory_mb is not None:
        lim(resource.RLIMIT_AS, int(policy.memory_mb) * 2**20)
    if policy.file_size_mb is not None:
        lim(resource.RLIMIT_FSIZE, int(policy.file_size_mb * 2**20))
        # Python ignores SIGXFSZ (writes would fail with EFBIG and code could carry on); end the process instead
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    if policy.open_files is not None:
        lim(resource.RLIMIT_NOFILE, int(policy.open_files))
    if policy.nproc is not None:
        lim(resource.RLIMIT_NPROC, int(policy.nproc))


def _chown_tree(root: str, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _reroute_sys_path() -> None:
    """Point ``sys.path`` at directory file descriptors (``/proc/self/fd/N``).

    After the uid drop, an interpreter installed under a directory only root may traverse (``/root/.pyenv``)
    could no longer import anything new; a path through an open directory descriptor does not re-check the
    ancestors. Landlock still decides on the files themselves.
    """
    new = []
    for p in sys.path:
        if p and os.path.isdir(p):
            fd = os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            new.append(f"/proc/self/fd/{fd}")
        else:
            new.append(p)
    sys.path[:] = new
    sys.path_importer_cache.clear()


def _drop_uid(policy: SandboxPolicy) -> int:
    import ctypes

    uid = policy.uid if policy.uid is not None else UID_BASE + os.getpid()
    if policy.work_dir is not None:
        _chown_tree(policy.work_dir, uid, uid)
    _reroute_sys_path()
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    libc = ctypes.CDLL(None, use_errno=True)
    # a credential change resets both: keep /proc/self/fd ours (sys.path goes through it) and die with the parent
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return uid


def _no_new_privs() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def _landlock_ruleset(policy: SandboxPolicy):
    """Build the ruleset (opening the allowed paths) while the process may still reach them."""
    landlock = _import("landlock", policy)
    fs = landlock.FSAccess
    everything = fs.all()
    file_rights = fs.all_file()
    read_file = fs.READ_FILE | fs.EXECUTE
    ruleset = landlock.Ruleset(restrict_rules=everything)

    def allow(path, rights):
        if not os.path.exists(path):
            return
        # a rule on a file may carry only file rights; the kernel rejects directory rights there (EINVAL)
        ruleset.allow(path, rules=rights if os.path.isdir(path) else rights & file_rights)

    allow(policy.work_dir, everything)
    for p in policy.read_only:
        allow(p, read_file | fs.READ_DIR)
    for p in _DEVICES_RW:
        allow(p, fs.READ_FILE | fs.WRITE_FILE)
    for p in _DEVICES_R:
        allow(p, fs.READ_FILE)
    if policy.allow_proc_self:
        allow(f"/proc/{os.getpid()}", fs.READ_FILE | fs.READ_DIR)
    return ruleset


def _seccomp_filter(policy: SandboxPolicy):
    sc = _import("pyseccomp", policy)
    f = sc.SyscallFilter(defaction=sc.ALLOW)
    eperm = sc.ERRNO(errno.EPERM)

    def deny(name, *args, action=eperm):
        try:
            f.add_rule(action, name, *args)
        except Exception:  # noqa: BLE001 - a system call this architecture does not have cannot be made either
            pass

    if not policy.allow_process_creation:
        for name in ("execve", "execveat", "fork", "vfork"):
            deny(name)
        # new processes are clones without CLONE_THREAD; threads (OpenMP, Python) stay allowed
        deny("clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
        # clone3 passes its flags in memory, which a filter cannot read: ENOSYS makes glibc use clone
        deny("clone3", action=sc.ERRNO(errno.ENOSYS))
    if not policy.allow_network:
        deny("socket")
    for name in _DENIED_EXTRA:
        deny(name)
    return f


def _open_socket_count() -> int | None:
    """Socket descriptors of this process (None where ``/proc/self/fd`` cannot be read)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    n = 0
    for fd in fds:
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # the descriptor listdir itself used, closed by now
            pass
    return n


def enter(policy: SandboxPolicy | dict) -> dict:
    """Apply ``policy`` to the current process; irreversible. Call it before reading any untrusted input.

    Returns ``{"enforced": [...], "skipped": {mechanism: why}, "uid": uid or None, "open_sockets": n}``, where
    ``n`` counts the socket descriptors already open on entry (the ``socket`` rule cannot close those). Raises
    :class:`SandboxUnavailable` when a mechanism the policy asks for is missing on this host and the weaker mode
    is off. Call it from a single-threaded process: rlimits, the uid and seccomp apply to the calling thread's
    process (uid and seccomp to threads created later), and the Landlock domain to the calling thread and its
    future threads.
    """
    if isinstance(policy, dict):
        policy = SandboxPolicy.from_dict(policy)
    wanted = [m for m in MECHANISMS if m in policy.mechanisms]
    missing = missing_mechanisms(policy)
    root = os.geteuid() == 0
    if "uid_drop" in wanted and not policy.drop_uid:
        wanted.remove("uid_drop")
    if missing and not policy.weaker_allowed:
        raise SandboxUnavailable(missing)
    for name, why in missing.items():
        import logging

        logging.getLogger(__name__).warning("sandbox: %s is NOT enforced (%s); running in the weaker mode that was asked for", name, why)
    report = {"enforced": [], "skipped": dict(missing), "uid": None, "open_sockets": _open_socket_count()}
    for name in MECHANISMS:
        if name not in policy.mechanisms:
            report["skipped"].setdefault(name, "left out by the policy")
    ruleset = _landlock_ruleset(policy) if "landlock" in wanted and "landlock" not in missing else None
    if "rlimits" in wanted:
        _set_rlimits(policy)
        report["enforced"].append("rlimits")
    if "uid_drop" in wanted:
        if root:
            report["uid"] = _drop_uid(policy)
            report["enforced"].append("uid_drop")
        else:
            report["skipped"]["uid_drop"] = "not root: already an unprivileged uid"
    if "no_new_privs" in wanted:
        _no_new_privs()
        report["enforced"].append("no_new_privs")
    if ruleset is not None:
        ruleset.apply()
        report["enforced"].append("landlock")
    if "seccomp" in wanted and "seccomp" not in missing:
        _seccomp_filter(policy).load()  # with both allowed, the extra denials still apply
        report["enforced"].append("seccomp")
    return report


# ---------------------------------------------------------------------------------------- running Python code
@dataclass
class SandboxResult:
    """Outcome of :func:`run_python`: exit status (negative: killed by that signal), output, timing, sandbox
    report (``enforced`` / ``skipped`` mechanisms), and whether the wall-clock limit ended it."""

    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    timed_out: bool = False
    sandbox: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _bootstrap(policy_path: str) -> int:
    """Child side of :func:`run_python`: enter the policy, then read the untrusted code from stdin and run it."""
    with open(policy_path) as f:
        policy = SandboxPolicy.from_dict(json.load(f))
    report_fd = int(os.environ.pop("RLPOST_SANDBOX_REPORT_FD"))
    os.chdir(policy.work_dir or ".")  # now: after the uid drop its ancestors may not be traversable
    try:
        report = enter(policy)
    except SandboxUnavailable as e:
        os.write(report_fd, json.dumps({"error": str(e)}).encode())
        return 70
    os.write(report_fd, json.dumps(report).encode())
    os.close(report_fd)
    code = sys.stdin.read()
    glb = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(code, "<sandboxed>", "exec"), glb)  # noqa: S102 - this is what the sandbox is for
    return 0


def run_python(code: str, policy: SandboxPolicy | None = None, *, timeout_s: float = 30.0,
               env: dict[str, str] | None = None, max_output_chars: int = 100_000) -> SandboxResult:
    """Run Python source in a fresh interpreter under ``policy``; never raises for what the code does.

    The child is ``python -I -S`` (no site, no user environment), gets a scrubbed environment (``env``, default
    just ``PATH``/``HOME``/``TMPDIR``/``LANG``), enters the policy, and only then reads ``code`` from stdin. With
    no ``policy``, a temporary work dir is made (and removed) and the interpreter's own paths are readable.
    Raises :class:`SandboxUnavailable` (before running anything) when the policy cannot be enforced here.
    """
    import shutil
    import subprocess
    import tempfile
    import time
    own_dir = None
    if policy is None:
        own_dir = tempfile.mkdtemp(prefix="rlpost_sbx_")
        policy = SandboxPolicy(work_dir=own_dir, read_only=python_read_paths() + system_read_paths())
    if policy.work_dir is None:
        raise ValueError("run_python needs SandboxPolicy.work_dir")
    missing = missing_mechanisms(policy)
    if missing and not policy.weaker_allowed:
        raise SandboxUnavailable(missing)
    ctl = tempfile.mkdtemp(prefix="rlpost_sbx_ctl_")
    try:
        policy_path = os.path.join(ctl, "policy.json")
        with open(policy_path, "w") as f:
            json.dump(policy.to_dict(), f)
        read_fd, write_fd = os.pipe()
        child_env = {"PATH": "/usr/bin:/bin", "HOME": policy.work_dir, "TMPDIR": policy.work_dir,
                     "LANG": "C.UTF-8", **(env or {}), "RLPOST_SANDBOX_REPORT_FD": str(write_fd)}
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), "--bootstrap", policy_path],
                                cwd=policy.work_dir, env=child_env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                pass_fds=(write_fd,))
        os.close(write_fd)
        timed_out = False
        try:
            out, err = proc.communicate(code.encode(), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc.pid)
            out, err = proc.communicate()
        finally:
            kill_group(proc.pid)  # nothing of the group outlives the run
        with os.fdopen(read_fd, "rb") as f:
            raw = f.read()
        report = json.loads(raw) if raw else {}
        return SandboxResult(proc.returncode, out.decode(errors="replace")[:max_output_chars],
                             err.decode(errors="replace")[:max_output_chars], time.monotonic() - t0,
                             timed_out, report)
    finally:
        shutil.rmtree(ctl, ignore_errors=True)
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def kill_group(pgid: int) -> None:
    """SIGKILL a sandbox's process group (its leader was started with ``start_new_session``)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------- self-report
_PROBE = r"""
import errno, os, socket, threading
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "allowed"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
attempt("write_outside", lambda: open(os.environ["PROBE_OUTSIDE"] + "/x", "w"))
attempt("read_outside", lambda: open(os.environ["PROBE_OUTSIDE"] + "/secret").read())
attempt("write_work_dir", lambda: open("inside.txt", "w").write("ok"))
attempt("fork", lambda: os._exit(0) if os.fork() == 0 else os.wait())
attempt("exec", lambda: os.execv("/bin/true", ["true"]))
attempt("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
t = threading.Thread(target=lambda: None); t.start(); t.join(); out["thread"] = "allowed"
out["uid"] = os.getuid()
print(__import__("json").dumps(out))
"""


def check(policy: SandboxPolicy | None = None, *, probe: bool = True) -> dict:
    """What the sandbox enforces on this host: ``{mechanism: "enforced" | why not}``, plus (``probe=True``) what a
    real sandboxed child observed when it tried to escape (``write_outside``, ``read_outside``, ``fork``,
    ``exec``, ``socket``: the errno name, or ``"allowed"``; ``thread`` and ``write_work_dir`` should be allowed).

    ``python -m rlpost.sandbox`` prints it.
    """
    import shutil
    import tempfile
    from pathlib import Path
    base = policy or SandboxPolicy(work_dir=tempfile.gettempdir())
    missing = missing_mechanisms(base)
    report = {"mechanisms": {m: missing.get(m, "available") for m in MECHANISMS},
              "root": os.geteuid() == 0, "landlock_abi": _landlock_abi()[0] if sys.platform.startswith("linux")
              else 0}
    if not report["root"]:
        report["mechanisms"]["uid_drop"] = "not needed: not root"
    if probe:
        outside = tempfile.mkdtemp(prefix="rlpost_probe_outside_")
        work = tempfile.mkdtemp(prefix="rlpost_probe_work_")
        try:
            Path(outside, "secret").write_text("secret\n")
            pol = SandboxPolicy(**{**base.to_dict(), "work_dir": work,
                                   "read_only": python_read_paths() + system_read_paths(),
                                   "allow_weaker": True})
            res = run_python(_PROBE, pol, timeout_s=30, env={"PROBE_OUTSIDE": outside})
            try:
                report["probe"] = json.loads(res.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                report["probe"] = {"error": (res.stderr or "no output")[-500:]}
            report["probe"]["enforced"] = res.sandbox.get("enforced", [])
            report["probe"]["outside_untouched"] = os.listdir(outside) == ["secret"]
        finally:
            shutil.rmtree(outside, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    return report


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--bootstrap":
        sys.exit(_bootstrap(sys.argv[2]))
    print(json.dumps(check(), indent=1))
