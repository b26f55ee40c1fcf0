"""Every ZeRO check, run under ``mpiexec -n W python tests/mpi/zero_checks.py``.

One launch runs them all (an mpiexec start costs more than the checks);
rank 0 prints one JSON object on stdout: ``{check: {"ok": bool, "detail": str}}``,
a check being ok when it passed on every rank. tests/test_distributed.py reads it.

The reference is a single-process ``ms_optim.AdamW`` run in every rank on the
same averaged gradients (the issue's definition of parity), plus an independent
float64 mean of all ranks' raw gradients for ``all_reduce_mean`` itself.
"""

from __future__ import annotations

import copy
import json
import sys
import traceback

import numpy as np
from mpi4py import MPI

import ms_optim
import schedulers
from ms_optim.distributed import ZeroRedundancyOptimizer, all_reduce_mean

COMM = MPI.COMM_WORLD
RANK, WORLD = COMM.Get_rank(), COMM.Get_size()
RESULTS: dict[str, list] = {}


def check(name, ok, detail=""):
    RESULTS.setdefault(name, []).append((bool(ok), f"rank {RANK}: {detail}" if not ok else ""))


def shapes():
    # varied sizes, ties included, so the greedy partition has work to do; two dtypes
    g0 = [(64, 32), (32,), (16, 16), (256,), (8, 8, 4), (32,), (3,), (128, 2), (1,), (0,)]
    g1 = [(40, 10), (10,), (200,), (7, 7)]
    return g0, g1


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    g0, g1 = shapes()
    p0 = [rng.standard_normal(s).astype(np.float32) for s in g0]
    p1 = [rng.standard_normal(s).astype(np.float64 if i % 2 else np.float32) for i, s in enumerate(g1)]
    return p0, p1


def groups(p0, p1):
    return [{"params": p0}, {"params": p1, "lr": 3e-3, "weight_decay": 0.0, "amsgrad": True}]


def local_grads(params, step, skip=()):
    rng = np.random.default_rng([step, RANK, 7])
    return [None if i in skip else rng.standard_normal(p.shape).astype(p.dtype) for i, p in enumerate(params)]


def averaged(params, step, skip=()):
    raw = local_grads(params, step, skip)
    avg = [None if g is None else g.copy() for g in raw]
    all_reduce_mean(avg)
    return raw, avg


def same_arrays(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


def same_everywhere(arrays) -> bool:
    """Every rank holds bit-identical arrays."""
    mine = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return all(x == mine for x in COMM.allgather(mine))


def same_state_dict(a, b):
    if set(a["state"]) != set(b["state"]) or len(a["param_groups"]) != len(b["param_groups"]):
        return False, f"ids {sorted(a['state'])} vs {sorted(b['state'])}"
    for pid in a["state"]:
        sa, sb = a["state"][pid], b["state"][pid]
        if set(sa) != set(sb):
            return False, f"state[{pid}] keys {sorted(sa)} vs {sorted(sb)}"
        for k in sa:
            va, vb = sa[k], sb[k]
            if isinstance(vb, np.ndarray):
                if not (isinstance(va, np.ndarray) and va.dtype == vb.dtype and np.array_equal(va, vb)):
                    return False, f"state[{pid}][{k!r}] differs"
            elif type(va) is not type(vb) or va != vb:
                return False, f"state[{pid}][{k!r}] {va!r} vs {vb!r}"
    for ga, gb in zip(a["param_groups"], b["param_groups"]):
        if set(ga) != set(gb) or any(ga[k] != gb[k] for k in gb):
            return False, f"groups {ga} vs {gb}"
    return True, ""


def snapshot(zero):
    return (
        [p.copy() for p in zero.parameters],
        {id(p): {k: copy.deepcopy(v) for k, v in st.items()} for p, st in zero.state.items()},
        [{k: v for k, v in g.items() if k != "params"} for g in zero.param_groups],
        [{k: v for k, v in g.items() if k != "params"} for g in zero.optim.param_groups] if zero.optim else [],
    )


def same_snapshot(a, b):
    params_a, state_a, groups_a, local_a = a
    params_b, state_b, groups_b, local_b = b
    if not same_arrays(params_a, params_b) or groups_a != groups_b or local_a != local_b:
        return False
    if set(state_a) != set(state_b):
        return False
    for pid in state_a:
        for k, v in state_a[pid].items():
            w = state_b[pid][k]
            if isinstance(v, np.ndarray) != isinstance(w, np.ndarray):
                return False
            if isinstance(v, np.ndarray) and not np.array_equal(v, w):
                return False
            if not isinstance(v, np.ndarray) and v != w:
                return False
    return True


def expect_error(name, zero, call, kind):
    before = snapshot(zero)
    try:
        call()
    except kind:
        check(name, same_snapshot(before, snapshot(zero)), "something changed")
    except Exception as err:  # noqa: BLE001
        check(name, False, f"{type(err).__name__}: {err}")
    else:
        check(name, False, f"no {kind.__name__}")


def run():
    p0, p1 = make_params()
    r0, r1 = [p.copy() for p in p0], [p.copy() for p in p1]
    zero = ZeroRedundancyOptimizer(groups(p0, p1), ms_optim.AdamW, lr=1e-2, weight_decay=0.1)
    ref = ms_optim.AdamW(groups(r0, r1), lr=1e-2, weight_decay=0.1)
    sz, sr = schedulers.StepLR(zero, step_size=2, gamma=0.5), schedulers.StepLR(ref, step_size=2, gamma=0.5)
    params, rparams = zero.parameters, ref.parameters
    n = len(params)

    # ---- parity at every step, schedulers, None gradients, all_reduce_mean itself
    for step in range(6):
        skip = {1, 12} if step == 3 else ()
        raw, avg = averaged(params, step, skip)
        every = COMM.allgather([None if g is None else g.astype(np.float64) for g in raw])
        mean_ok = all(
            (avg[i] is None) if raw[i] is None else np.allclose(avg[i], sum(r[i] for r in every) / WORLD,
                                                                rtol=1e-6, atol=1e-6)
            for i in range(n))
        check("all_reduce_mean", mean_ok, f"step {step}")
        check("all_reduce_mean_identical_on_ranks", same_everywhere([g for g in avg if g is not None]), f"step {step}")
        zero.step(avg)
        ref.step(avg)
        # the lr the scheduler wrote last is the one the shards just stepped with
        if zero.optim is not None:
            check("scheduler_reaches_shards",
                  all(lg["lr"] == zero.param_groups[gi]["lr"]
                      for gi, lg in [(gi, zero.optim.param_groups[li])
                                     for gi, li in enumerate(zero._local_group_of) if li is not None]),
                  f"step {step}")
        sz.step()
        sr.step()
        check("parity_every_step", same_arrays(params, rparams), f"step {step}")
        check("params_identical_on_ranks", same_everywhere(params), f"step {step}")
    check("scheduler_moved_lr", zero.param_groups[0]["lr"] == ref.param_groups[0]["lr"] == 1e-2 * 0.5 ** 3,
          f"lr {zero.param_groups[0]['lr']}")

    # ---- each rank holds its shard's state only; the shards add up to all parameters
    index = {id(p): i for i, p in enumerate(params)}
    held = sorted(index[id(p)] for p, st in zero.state.items() if st)
    owned = sorted(i for i in range(n) if zero.owner(i) == RANK)
    every_held = COMM.allgather(held)
    flat = [i for h in every_held for i in h]
    stateful = sorted(i for i, p in enumerate(rparams) if ref.state.get(p))
    check("state_only_own_shard", set(held) <= set(owned), f"held {held}, owned {owned}")
    check("shards_add_up", sorted(flat) == stateful and len(flat) == len(set(flat)), f"{every_held} vs {stateful}")
    check("no_rank_holds_all", WORLD == 1 or all(len(h) < len(stateful) for h in every_held), f"{every_held}")
    state_bytes = sum(v.nbytes for st in zero.state.values() for v in st.values() if isinstance(v, np.ndarray))
    all_bytes = sum(v.nbytes for st in ref.state.values() for v in st.values() if isinstance(v, np.ndarray))
    check("state_bytes_shrink", WORLD == 1 or state_bytes < all_bytes, f"{state_bytes} of {all_bytes}")

    # ---- consolidated state dict == the single-process one
    last = WORLD - 1
    zero.consolidate_state_dict(to=last)
    if RANK == last:
        ok, why = same_state_dict(zero.state_dict(), ref.state_dict())
        check("consolidated_equals_single_process", ok, why)
    else:
        try:
            zero.state_dict()
            check("state_dict_needs_consolidation", False, "no RuntimeError")
        except RuntimeError:
            check("state_dict_needs_consolidation", True)
    full = COMM.bcast(zero.state_dict() if RANK == last else None, root=last)

    # ---- failed steps change nothing on any rank
    good = averaged(params, 100)[1]
    expect_error("bad_step_length", zero, lambda: zero.step(good[:-1]), ValueError)
    bad_shape = list(good)
    bad_shape[n - 1] = np.zeros((3, 3), params[n - 1].dtype)
    expect_error("bad_step_shape_other_rank", zero, lambda: zero.step(bad_shape), ValueError)
    bad_type = list(good)
    bad_type[0] = [0.0]
    expect_error("bad_step_type", zero, lambda: zero.step(bad_type), TypeError)
    expect_error("bad_step_grads_string", zero, lambda: zero.step("grads"), TypeError)
    saved_lr = zero.param_groups[1]["lr"]
    zero.param_groups[1]["lr"] = -1.0
    expect_error("bad_step_hyperparameter", zero, lambda: zero.step(good), ValueError)
    zero.param_groups[1]["lr"] = saved_lr
    huge = [None if g is None else g.copy() for g in good]
    f32 = [i for i, p in enumerate(params) if p.dtype == np.float32 and p.size][-1]
    huge[f32] = np.full(params[f32].shape, 1e300)
    expect_error("bad_step_overflowing_cast", zero, lambda: zero.step(huge), ValueError)
    zero.step(good)
    ref.step(good)
    check("parity_after_failed_steps", same_arrays(params, rparams))

    # ---- load_state_dict: a full one-process dict, each rank keeps its shard, and steps on in parity
    q0, q1 = make_params(seed=5)
    s0, s1 = [p.copy() for p in q0], [p.copy() for p in q1]
    zero2 = ZeroRedundancyOptimizer(groups(q0, q1), ms_optim.AdamW, lr=1e-2, weight_decay=0.1)
    ref2 = ms_optim.AdamW(groups(s0, s1), lr=1e-2, weight_decay=0.1)
    corrupt = copy.deepcopy(full)
    victim = max(corrupt["state"])  # owned by some rank; all must refuse
    corrupt["state"][victim]["exp_avg"] = np.zeros((2, 2), np.float32)
    expect_error("bad_load_changes_nothing", zero2, lambda: zero2.load_state_dict(corrupt), ValueError)
    zero2.load_state_dict(copy.deepcopy(full))
    ref2.load_state_dict(copy.deepcopy(full))
    index2 = {id(p): i for i, p in enumerate(zero2.parameters)}
    held2 = sorted(index2[id(p)] for p, st in zero2.state.items() if st)
    check("load_keeps_own_shard", set(held2) <= {i for i in range(n) if zero2.owner(i) == RANK}, f"{held2}")
    check("load_groups", zero2.param_groups[0]["lr"] == full["param_groups"][0]["lr"])
    for step in range(2):
        g = averaged(zero2.parameters, 200 + step)[1]
        zero2.step(g)
        ref2.step(g)
        check("parity_after_load", same_arrays(zero2.parameters, ref2.parameters), f"step {step}")

    # ---- add_param_group: earlier params keep their owners, the new group is sharded, parity holds
    owners_before = [zero2.owner(i) for i in range(n)]
    rng = np.random.default_rng(11)
    extra = [rng.standard_normal(s).astype(np.float32) for s in [(30, 30), (5,), (300,), (12, 12)]]
    zero2.add_param_group({"params": extra, "lr": 1e-3})
    ref2.add_param_group({"params": [e.copy() for e in extra], "lr": 1e-3})
    check("add_group_keeps_owners", [zero2.owner(i) for i in range(n)] == owners_before)
    for step in range(2):
        g = averaged(zero2.parameters, 300 + step)[1]
        zero2.step(g)
        ref2.step(g)
        check("parity_after_add_param_group", same_arrays(zero2.parameters, ref2.parameters), f"step {step}")
    check("params_identical_on_ranks_after_add", same_everywhere(zero2.parameters))
    zero2.consolidate_state_dict(to=0)
    if RANK == 0:
        ok, why = same_state_dict(zero2.state_dict(), ref2.state_dict())
        check("consolidated_after_add_param_group", ok, why)


def main():
    try:
        run()
    except Exception:  # noqa: BLE001 -- reported, not raised: the other ranks may be waiting
        check("no_exception", False, traceback.format_exc())
    gathered = COMM.gather(RESULTS, root=0)
    if RANK == 0:
        merged: dict[str, dict] = {}
        for part in gathered:
            for name, entries in part.items():
                m = merged.setdefault(name, {"ok": True, "detail": ""})
                for ok, detail in entries:
                    if not ok:
                        m["ok"] = False
                        m["detail"] += detail + "; "
        print(json.dumps({"world": WORLD, "checks": merged}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
