"""ZeRO-1 over MPI on this machine: optimizer-state bytes per rank and step time, for 1, 2 and 4 ranks.

``--tensors`` float32 parameters holding ``--elements`` in all, AdamW. For each rank
count W this script launches ``mpiexec -n W`` on itself (the mpiexec of the PyPI
``mpich`` wheel, beside this Python) and every rank times, with a barrier before
each iteration and the slowest rank's time kept:

* ``all_reduce_mean``: the gradients averaged over the ranks (bucketed Allreduce);
* ``ZeRO step``: ``ZeroRedundancyOptimizer(AdamW).step`` (the local shard's update,
  the agreement all-reduce, then one broadcast per owner);
* ``both``: the two, i.e. a data-parallel step less the forward/backward pass.

The reference is one process running ``ms_optim.AdamW`` over all the parameters,
timed in the W=1 launch of this same run (alone on the machine, with every core's
threads); ``vs 1 process`` is each median over that one. Each rank gets
``cores // W`` threads (at least 1). With more ranks than cores (4 on a 2-core
machine) the ranks oversubscribe: MPICH's hydra starts them regardless (it has no
--oversubscribe flag) and its shared-memory transport busy-polls, so a waiting
rank takes a core from a working one; those rows measure that contention.

Run (the committed results were made with exactly this)::

    python benchmarks/bench_distributed.py --out benchmarks/results/distributed-<kind>-<date>.txt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="1,2,4", help="rank counts to launch (default 1,2,4)")
    p.add_argument("--tensors", type=int, default=200, help="number of parameter arrays (default 200)")
    p.add_argument("--elements", type=float, default=1e7, help="float32 elements in all (default 1e7)")
    p.add_argument("--cores", type=int, default=None, help="cores to share among the ranks (default: usable CPUs)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", type=Path, help="also write the report to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _sizes(args):
    n = int(args.elements)
    return [n // args.tensors + (1 if i < n % args.tensors else 0) for i in range(args.tensors)]


def worker(args) -> None:
    """One rank of one launch: prints (rank 0) a JSON line of timings and state bytes."""
    import numpy as np
    from mpi4py import MPI

    import ms_optim
    from ms_optim.distributed import ZeroRedundancyOptimizer, all_reduce_mean

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    sizes = _sizes(args)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    grads_rank = [np.random.default_rng([1, rank]).standard_normal(s).astype(np.float32) * 1e-3 for s in sizes]
    zero = ZeroRedundancyOptimizer(params, ms_optim.AdamW, comm=comm, lr=1e-4)
    work = [g.copy() for g in grads_rank]

    def timed(fn):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        mine = time.perf_counter() - t0
        return comm.allreduce(mine, op=MPI.MAX)  # the step is as slow as its slowest rank

    def reduce():
        for w, g in zip(work, grads_rank):
            w[...] = g  # untimed below: restored before each all-reduce

    def both():
        all_reduce_mean(work, comm)
        zero.step(work)

    res = {"all_reduce_mean": [], "zero_step": [], "both": [], "single": []}
    single = ms_optim.AdamW([p.copy() for p in params], lr=1e-4) if world == 1 else None
    for i in range(args.warmup + args.repeats):
        keep = i >= args.warmup
        reduce()
        t = timed(lambda: all_reduce_mean(work, comm))
        s = timed(lambda: zero.step(work))
        reduce()
        b = timed(both)
        if keep:
            res["all_reduce_mean"].append(t)
            res["zero_step"].append(s)
            res["both"].append(b)
        if single is not None:
            reduce()
            one = timed(lambda: single.step(work))
            if keep:
                res["single"].append(one)
    state_bytes = sum(v.nbytes for st in zero.state.values() for v in st.values() if isinstance(v, np.ndarray))
    every = comm.gather(state_bytes, root=0)
    same = comm.allgather(b"".join(p.tobytes()[:64] + p.tobytes()[-64:] for p in params))
    if rank == 0:
        out = {k: v for k, v in res.items() if v}
        out.update(world=world, state_bytes=every, params_identical=all(x == same[0] for x in same),
                   single_state_bytes=(sum(v.nbytes for st in single.state.values() for v in st.values()
                                           if isinstance(v, np.ndarray)) if single is not None else None))
        print(json.dumps(out), flush=True)


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    from bench_cpu import _load, machine_facts

    cores = args.cores or len(os.sched_getaffinity(0))
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        print(f"no mpiexec beside {sys.executable}: pip install mpi4py mpich", file=sys.stderr)
        return 1
    ranks = [int(r) for r in args.ranks.split(",")]
    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    mpich = subprocess.run([str(mpiexec), "--version"], capture_output=True, text=True).stdout
    version = next((ln.split(":", 1)[1].strip() for ln in mpich.splitlines() if "Version" in ln), "unknown")
    n = sum(_sizes(args))
    out(f"ms_optim ZeroRedundancyOptimizer(AdamW) over MPI, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    out("command: python benchmarks/bench_distributed.py " + " ".join(sys.argv[1:] if argv is None else argv))
    for line in machine_facts(cores)[:2]:
        out(line)
    out(f"MPI: MPICH {version} (PyPI wheel), mpiexec -n W on one machine (shared memory); mpi4py "
        f"{__import__('mpi4py').__version__}")
    out(f"the machine has {cores} cores: W=4 runs 4 ranks on {cores} cores (oversubscribed; hydra needs no flag)")
    out(f"data: {args.tensors} float32 parameters, {n:,} elements ({4 * n / 2**20:.1f} MiB); AdamW lr=1e-4, "
        "backend auto; gradients fixed per rank, restored untimed before each timed call")
    out(f"method: {args.warmup} warm-up then {args.repeats} timed iterations per W; barrier before each, the "
        "slowest rank's wall time; medians (min)")
    out(f"load average at start (1/5/15 min): {_load()}")
    results = {}
    for world in ranks:
        threads = max(1, cores // world)
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[var] = str(threads)
        cmd = [str(mpiexec), "-n", str(world), sys.executable, str(Path(__file__).resolve()), "--worker",
               "--tensors", str(args.tensors), "--elements", str(args.elements),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not found:
            out(f"W={world}: failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
            continue
        results[world] = dict(json.loads(found[-1]), threads=threads)
    if 1 not in results or "single" not in results[1]:
        out("no W=1 run: no single-process reference")
        return 1
    ref = statistics.median(results[1]["single"])
    single_bytes = results[1]["single_state_bytes"]

    def cell(v):
        return f"{1e3 * statistics.median(v):8.2f} ({1e3 * min(v):7.2f})"

    out()
    out(f"single process, ms_optim.AdamW.step over all {n:,} elements ({cores} threads): "
        f"{cell(results[1]['single'])} ms; state {single_bytes / 2**20:.1f} MiB")
    out()
    head = (f"{'W':>2} {'thr':>3}  {'state MiB per rank':<26} {'max/1-proc':>10}  {'all_reduce_mean ms':>20}  "
            f"{'ZeRO step ms':>20}  {'both ms':>20}  {'step vs 1 proc':>14}  {'both vs 1 proc':>14}  identical")
    out(head)
    out("-" * len(head))
    for world, r in sorted(results.items()):
        per_rank = ", ".join(f"{b / 2**20:.1f}" for b in r["state_bytes"])
        out(f"{world:>2} {r['threads']:>3}  {per_rank:<26} {max(r['state_bytes']) / single_bytes:>10.3f}  "
            f"{cell(r['all_reduce_mean']):>20}  {cell(r['zero_step']):>20}  {cell(r['both']):>20}  "
            f"{statistics.median(r['zero_step']) / ref:>14.2f}  {statistics.median(r['both']) / ref:>14.2f}  "
            f"{r['params_identical']}")
    out()
    out("state: AdamW's exp_avg and exp_avg_sq (8 bytes per element); 'max/1-proc' is the largest rank's share "
        "of the single process's state (ideal 1/W)")
    out("ZeRO step: the local AdamW update of the rank's shard plus the broadcast of every shard to every rank; "
        "'both' adds the gradient all-reduce. Single-machine numbers: over a network the all-reduce and broadcasts "
        "cost bandwidth (about 2P(W-1)/W + P(W-1)/W bytes per rank per step, P the parameters' bytes)")
    out("identical: every rank ended with bit-identical parameters (first/last 64 bytes of each compared)")
    out(f"load average at end (1/5/15 min): {_load()}")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
