"""ms_optim.distributed: ZeRO-1 and gradient averaging, under mpiexec with 2 and 3 ranks.

The multi-rank checks live in tests/mpi/zero_checks.py: one mpiexec launch per rank
count runs them all and reports JSON (a launch costs more than the checks). They skip
where mpi4py or the mpiexec beside this Python (the PyPI ``mpich`` wheel's) is absent.
The rest runs in this process: the partition against torch's, the NCCL transport with a
fake communicator that records its calls, and a real one-rank NCCL communicator where a
GPU is present.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ms_optim
from ms_optim.distributed import ZeroRedundancyOptimizer, all_reduce_mean, partition_sizes
from ms_optim.distributed import _comm

HERE = Path(__file__).parent
ROOT = HERE.parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"
try:
    import mpi4py  # noqa: F401 -- the package only: MPI itself starts in the mpiexec children

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

needs_mpi = pytest.mark.skipif(
    not (HAVE_MPI4PY and MPIEXEC.exists()),
    reason="needs mpi4py and mpiexec beside sys.executable (pip install mpi4py mpich)",
)

# Every check zero_checks.py makes; a check that silently stopped running fails here.
CHECKS = [
    "all_reduce_mean", "all_reduce_mean_identical_on_ranks", "parity_every_step", "params_identical_on_ranks",
    "scheduler_reaches_shards", "scheduler_moved_lr", "state_only_own_shard", "shards_add_up",
    "no_rank_holds_all", "state_bytes_shrink", "consolidated_equals_single_process",
    "state_dict_needs_consolidation", "bad_step_length", "bad_step_shape_other_rank", "bad_step_type",
    "bad_step_grads_string", "bad_step_hyperparameter", "bad_step_overflowing_cast", "parity_after_failed_steps",
    "bad_load_changes_nothing", "load_keeps_own_shard", "load_groups", "parity_after_load",
    "add_group_keeps_owners", "parity_after_add_param_group", "params_identical_on_ranks_after_add",
    "consolidated_after_add_param_group",
]


def mpirun(n: int, *args, timeout=120):
    """``mpiexec -n n python *args``, with this tree's ms_optim first on the path."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # one BLAS thread per rank: the ranks already share this machine's cores
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([str(MPIEXEC), "-n", str(n), sys.executable, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


_RUNS: dict[int, dict] = {}


def zero_checks(world: int) -> dict:
    if world not in _RUNS:
        proc = mpirun(world, HERE / "mpi" / "zero_checks.py")
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        assert proc.returncode == 0 and lines, f"mpiexec -n {world} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        _RUNS[world] = json.loads(lines[-1])
    return _RUNS[world]


@needs_mpi
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", CHECKS)
def test_zero_under_mpiexec(world, name):
    result = zero_checks(world)
    assert result["world"] == world
    assert "no_exception" not in result["checks"], result["checks"]["no_exception"]["detail"]
    assert name in result["checks"], f"check {name} did not run"
    assert result["checks"][name]["ok"], result["checks"][name]["detail"]


@needs_mpi
def test_demo_distributed_reaches_one_process_accuracy():
    from ms_optim.demo.train import TrainConfig, train

    proc = mpirun(2, "-m", "ms_optim", "demo", "--distributed", "--steps", "300", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("ms_optim demo:") for line in lines) == 1, "only rank 0 prints"
    assert any("data-parallel over 2 MPI ranks" in line for line in lines)
    done = [line for line in lines if line.startswith("done: test accuracy ")]
    assert len(done) == 1, proc.stdout
    accuracy = float(done[0].split()[3].rstrip("%")) / 100
    single = train(TrainConfig(steps=300)).test_accuracy
    # the averaged gradient is the whole batch's up to float32 rounding: one test digit of slack
    assert abs(accuracy - single) <= 1 / 359 + 1e-9, (accuracy, single)


@needs_mpi
def test_demo_distributed_refuses_what_it_cannot_do_once():
    proc = mpirun(2, "-m", "ms_optim", "demo", "--distributed", "--compare", "adamw,sgd")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["ms-optim demo: error: --distributed cannot be combined with --compare"]


# ----------------------------------------------------------------- the partition


def torch_rule(group_sizes, world_size):
    """torch's greedy rule, transcribed from torch/distributed/optim/zero_redundancy_optimizer.py
    (``_partition_parameters`` and ``_get_min_index``, torch 2.13), over sizes instead of tensors."""
    sizes = [0] * world_size
    out = [[] for _ in range(world_size)]
    for group in group_sizes:
        per_rank = [[] for _ in range(world_size)]
        params = list(enumerate(group))
        params_sorted = sorted(params, key=lambda t: t[1], reverse=True)
        for index, numel in params_sorted:
            min_index, min_value = -1, float("inf")
            for i, value in enumerate(sizes):
                if value < min_value:
                    min_value, min_index = value, i
            per_rank[min_index].append(index)
            sizes[min_index] += numel
        for rank in range(world_size):
            out[rank].append(per_rank[rank])
    return out


def random_groups(seed):
    rng = np.random.default_rng(seed)
    # small ranges make ties common, where the order rules matter most
    return [list(map(int, rng.integers(0, 6, rng.integers(1, 9)))) for _ in range(rng.integers(1, 4))]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_partition_is_torchs_rule(seed, world):
    groups = random_groups(seed)
    assert partition_sizes(groups, world) == torch_rule(groups, world)


@pytest.mark.parametrize("seed", range(5))
def test_partition_is_torchs_own_code(seed):
    """torch's own _partition_parameters, run on an instance built without a process group."""
    torch = pytest.importorskip("torch")
    zro = pytest.importorskip("torch.distributed.optim.zero_redundancy_optimizer")
    groups = random_groups(seed)
    world = 3
    tensors = [[torch.zeros(n) for n in g] for g in groups]
    fake = object.__new__(zro.ZeroRedundancyOptimizer)
    fake.world_size = world
    fake.param_groups = [{"params": ts} for ts in tensors]
    fake._partition_parameters_cache = []
    try:
        theirs = zro.ZeroRedundancyOptimizer._partition_parameters(fake)
    except (AttributeError, TypeError) as err:  # a private method: its attributes may move
        pytest.skip(f"torch's _partition_parameters needs more than this test sets up: {err}")
    as_indices = [[[next(i for i, t in enumerate(ts) if t is p) for p in rank_group["params"]]
                   for rank_group, ts in zip(rank_groups, tensors)] for rank_groups in theirs]
    assert partition_sizes(groups, world) == as_indices


# ------------------------------------------------------------ the NCCL transport

_NP_OF_NCCL = {code: np.dtype(name) for name, code in _comm.NCCL_DTYPES.items() if name != "bfloat16"}


class FakeNccl:
    """A stand-in for cupy.cuda.nccl.NcclCommunicator over host memory, recording every call.

    It plays rank ``rank`` of ``size``: an all-reduce sum is as if every other rank held
    the same values; a broadcast from another rank writes ``fill`` into the buffer.
    """

    def __init__(self, size=1, rank=0, fill=7.0):
        self._size, self._rank, self.fill, self.calls = size, rank, fill, []

    def rank_id(self):
        return self._rank

    def size(self):
        return self._size

    @staticmethod
    def _view(ptr, count, datatype):
        dt = _NP_OF_NCCL[datatype]
        raw = (ctypes.c_char * (count * dt.itemsize)).from_address(ptr)
        return np.frombuffer(raw, dtype=dt, count=count)

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):  # noqa: N802 -- NCCL's name
        assert sendbuf == recvbuf, "in place"
        self.calls.append(("allReduce", count, datatype, op))
        if op == _comm.NCCL_SUM:
            self._view(recvbuf, count, datatype)[...] *= self._size

    def bcast(self, buff, count, datatype, root, stream):
        self.calls.append(("bcast", count, datatype, root))
        if root != self._rank:
            self._view(buff, count, datatype)[...] = self.fill


def test_fake_nccl_is_taken_for_nccl():
    assert isinstance(_comm.transport(FakeNccl()), _comm.NCCLTransport)


def test_all_reduce_mean_buckets_over_nccl():
    comm = FakeNccl(size=2)
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(np.float32) for s in [(100, 100), (10,), (3, 3)]]
    grads += [None, rng.standard_normal((50,)), np.zeros((0,), np.float32)]
    before = [None if g is None else g.copy() for g in grads]
    all_reduce_mean(grads, comm, bucket_bytes=30_000)
    # float32: 40,000 bytes alone, then 40 + 36 + 0 bytes in a second bucket; float64: one
    assert comm.calls == [("allReduce", 10_000, 7, 0), ("allReduce", 19, 7, 0), ("allReduce", 50, 8, 0)]
    for g, b in zip(grads, before):
        assert (g is None and b is None) or np.array_equal(g, b)  # (2 g) / 2 is g exactly


def test_zero_step_broadcasts_from_owners_over_nccl():
    """Rank 0 of 2: it updates its shard as AdamW would, and takes rank 1's from rank 1's broadcast."""
    comm = FakeNccl(size=2, rank=0, fill=7.0)
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(20, 20), (30,), (10, 10), (5,)]]
    ref = [p.copy() for p in params]
    zero = ZeroRedundancyOptimizer(params, ms_optim.AdamW, comm=comm, lr=0.1)
    adamw = ms_optim.AdamW(ref, lr=0.1)
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    zero.step(grads)
    adamw.step(grads)
    owners = [zero.owner(i) for i in range(len(params))]
    assert owners == [0, 1, 1, 1]  # largest first: 400 -> rank 0, then 100, 30 and 5 -> rank 1 (135 < 400)
    for p, r, owner in zip(params, ref, owners):
        if owner == 0:
            assert np.array_equal(p, r)
        else:
            assert np.all(p == 7.0)
    # one agreement all-reduce, then one broadcast per rank (one dtype, one bucket each)
    assert comm.calls == [("allReduce", 1, 2, _comm.NCCL_MIN), ("bcast", 400, 7, 0), ("bcast", 135, 7, 1)]
    assert set(map(id, zero.state)) == {id(params[0])}


def test_nccl_objects_travel_as_bytes():
    comm = FakeNccl(size=1)
    t = _comm.transport(comm)
    obj = {"state": {0: {"step": 3, "exp_avg": np.arange(4.0)}}}
    out = t.gather_object(obj, 0)
    assert out[0] is obj
    assert [c[0] for c in comm.calls] == ["bcast", "bcast"]  # the length, then the pickled bytes


def test_one_rank_zero_equals_the_optimizer():
    comm = FakeNccl(size=1)
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(s) for s in [(4, 4), (3,)]]
    ref = [p.copy() for p in params]
    zero = ZeroRedundancyOptimizer([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], ms_optim.SGD,
                                   comm=comm, lr=0.1, momentum=0.9)
    sgd = ms_optim.SGD([{"params": ref[:1]}, {"params": ref[1:], "lr": 0.5}], lr=0.1, momentum=0.9)
    for _ in range(3):
        g = [rng.standard_normal(p.shape) for p in params]
        zero.step(g)
        sgd.step(g)
    assert all(np.array_equal(a, b) for a, b in zip(params, ref))
    zero.consolidate_state_dict()
    full, single = zero.state_dict(), sgd.state_dict()
    assert full["param_groups"] == single["param_groups"]
    assert all(np.array_equal(full["state"][i]["momentum_buffer"], single["state"][i]["momentum_buffer"])
               for i in single["state"])


# ------------------------------------------------------------------- bad input


def test_bad_constructor_arguments():
    p = [np.zeros(3)]
    with pytest.raises(TypeError, match="optimizer_class"):
        ZeroRedundancyOptimizer(p, "AdamW", comm=FakeNccl())
    with pytest.raises(TypeError, match="optimizer_class"):
        ZeroRedundancyOptimizer(p, ZeroRedundancyOptimizer, comm=FakeNccl())
    with pytest.raises(TypeError, match="comm"):
        ZeroRedundancyOptimizer(p, ms_optim.AdamW, comm=object())
    with pytest.raises(ValueError, match="learning rate: -1.0"):
        ZeroRedundancyOptimizer(p, ms_optim.AdamW, comm=FakeNccl(), lr=-1.0)
    with pytest.raises(TypeError, match="grads"):
        all_reduce_mean(np.zeros(3), FakeNccl())
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        all_reduce_mean([np.zeros(3), np.zeros(3, dtype=np.int64)], FakeNccl())
    with pytest.raises(ValueError, match="bucket_bytes"):
        all_reduce_mean([np.zeros(3)], FakeNccl(), bucket_bytes=0)
    zero = ZeroRedundancyOptimizer(p, ms_optim.AdamW, comm=FakeNccl())
    with pytest.raises(ValueError, match="to must be a rank"):
        zero.consolidate_state_dict(to=1)
    with pytest.raises(RuntimeError, match="consolidate_state_dict"):
        zero.state_dict()
    zero.param_groups[0]["params"].append(np.zeros(2))
    with pytest.raises(ValueError, match="add_param_group"):
        zero.step([np.zeros(3), np.zeros(2)])


def test_import_costs_no_transport():
    code = ("import sys, ms_optim, ms_optim.distributed; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mpi4py', 'cupy', 'numba')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


# ---------------------------------------------------------- NCCL on a real GPU


def _gpu_count():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, no device
        return 0


@pytest.mark.skipif(_gpu_count() == 0, reason="no CUDA GPU")
def test_one_rank_nccl_on_gpu():
    import cupy
    from cupy.cuda import nccl

    if not nccl.available:
        pytest.skip("CuPy finds no libnccl (pip install nvidia-nccl-cu13)")
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    t = _comm.transport(comm)
    buf = cupy.arange(10, dtype=cupy.float32)
    t.allreduce_sum(buf)
    t.bcast(buf, 0)
    assert bool(cupy.all(buf == cupy.arange(10, dtype=cupy.float32)))
    assert t.all_true(True) and not t.all_true(False)
    assert t.bcast_object({"a": 1}, 0) == {"a": 1}
    rng = np.random.default_rng(3)
    host = [rng.standard_normal(s).astype(np.float32) for s in [(64, 64), (64,)]]
    params, ref = [cupy.asarray(h) for h in host], [cupy.asarray(h) for h in host]
    zero = ZeroRedundancyOptimizer(params, ms_optim.AdamW, comm=comm, lr=1e-2)
    adamw = ms_optim.AdamW(ref, lr=1e-2)
    for _ in range(3):
        g = [cupy.asarray(rng.standard_normal(h.shape).astype(np.float32)) for h in host]
        all_reduce_mean(g, comm)
        zero.step(g)
        adamw.step(g)
    assert all(bool(cupy.all(a == b)) for a, b in zip(params, ref))


def test_zero_checks_each_gradient_as_the_unsharded_optimizer_does():
    """One set of gradient checks serves both: every rank refuses alike, before anything changes."""
    p = [np.ones(3), np.ones((2, 2))]
    zero = ZeroRedundancyOptimizer(p, ms_optim.AdamW, comm=FakeNccl())
    for bad, exc, match in [
        ([np.ones(3), np.ones(4)], ValueError, r"grads\[1\] has shape \(4,\), its parameter \(2, 2\)"),
        ([np.ma.masked_array(np.ones(3)), None], TypeError, r"grads\[0\] is a MaskedArray"),
        ([np.ones(3, np.int64), None], TypeError, r"grads\[0\] has dtype int64"),
        ([np.float64(1.0), None], TypeError, r"grads\[0\] must be an array or None"),
    ]:
        with pytest.raises(exc, match=match):
            zero.step(bad)
        np.testing.assert_array_equal(p[0], 1.0)
    p32 = [np.ones(3, np.float32)]
    zero32 = ZeroRedundancyOptimizer(p32, ms_optim.AdamW, comm=FakeNccl())
    with pytest.raises(ValueError, match=r"grads\[0\] has finite float64 values beyond the range"):
        zero32.step([np.full(3, 1e300)])
    np.testing.assert_array_equal(p32[0], 1.0)
