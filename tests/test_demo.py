"""``python -m ms_optim demo``: the MLP's gradients, the training loop, checkpoints and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ms_optim.__main__ import main
from ms_optim.demo import checkpoint, choices, mlp
from ms_optim.demo.data import load_dataset
from ms_optim.demo.errors import DemoError
from ms_optim.demo.device import probe_gpu
from ms_optim.demo.train import Run, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """As the CLI does: tiny matmuls on a busy CI machine are many times slower multi-threaded."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
SHORT = TrainConfig(steps=120, batch_size=32)


def _problem(xp, seed=0, sizes=(7, 6, 5, 4), batch=9, dtype=None):
    """A small random classification problem and a net with two hidden layers."""
    rng = np.random.default_rng(seed)
    dtype = xp.float64 if dtype is None else dtype
    x = xp.asarray(rng.standard_normal((batch, sizes[0])), dtype=dtype)
    y = xp.asarray(rng.integers(0, sizes[-1], batch), dtype=xp.int64)
    params = mlp.init_params(list(sizes), xp, seed=seed, dtype=dtype)
    # non-zero biases, so their gradients and the ReLU masks are exercised in general position
    for i in range(1, len(params), 2):
        params[i][...] = xp.asarray(0.1 * rng.standard_normal(params[i].shape), dtype=dtype)
    return params, x, y


# --- the MLP -----------------------------------------------------------------------------


def test_gradients_match_central_differences():
    params, x, y = _problem(np)
    loss, grads = mlp.loss_and_grads(params, x, y, np)
    assert float(loss) == pytest.approx(float(mlp.loss_fn(params, x, y, np)), rel=1e-15)
    h = 1e-6
    for p, g in zip(params, grads):
        assert g.shape == p.shape and g.dtype == np.float64
        numeric = np.empty_like(p)
        for i in np.ndindex(p.shape):
            keep = p[i]
            p[i] = keep + h
            up = float(mlp.loss_fn(params, x, y, np))
            p[i] = keep - h
            down = float(mlp.loss_fn(params, x, y, np))
            p[i] = keep
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-9)


def test_mlp_runs_on_array_api_strict_and_matches_numpy():
    xps = pytest.importorskip("array_api_strict")
    p_np, x_np, y_np = _problem(np, seed=1)
    p_st, x_st, y_st = _problem(xps, seed=1)
    loss_np, g_np = mlp.loss_and_grads(p_np, x_np, y_np, np)
    loss_st, g_st = mlp.loss_and_grads(p_st, x_st, y_st, xps)
    assert float(loss_st) == pytest.approx(float(loss_np), rel=1e-12)
    for a, b in zip(g_st, g_np):
        np.testing.assert_allclose(np.from_dlpack(a), b, rtol=1e-12, atol=1e-15)
    assert mlp.accuracy(p_st, x_st, y_st, xps) == mlp.accuracy(p_np, x_np, y_np, np)


def test_training_runs_end_to_end_on_array_api_strict():
    xps = pytest.importorskip("array_api_strict")
    config = TrainConfig(steps=30, batch_size=32)
    strict = Run(config, xps).train()
    ref = train(config)
    np.testing.assert_allclose(strict.loss, ref.loss, rtol=1e-5)


def test_init_gives_fresh_arrays_of_the_requested_dtype():
    params = mlp.init_params([4, 3, 2], np, seed=0, dtype=np.float32)
    assert [p.shape for p in params] == [(4, 3), (3,), (3, 2), (2,)]
    assert all(p.dtype == np.float32 and p.flags.writeable and p.base is None for p in params)
    again = mlp.init_params([4, 3, 2], np, seed=0, dtype=np.float32)
    assert all(np.array_equal(a, b) for a, b in zip(params, again))


# --- training ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_history():
    return train(SHORT)


def test_short_run_learns(short_history):
    h = short_history
    assert h.steps == SHORT.steps == len(h.lr)
    assert np.mean(h.loss[-10:]) < 0.25 * h.loss[0]
    assert h.train_loss < 0.2 * h.loss[0]
    assert h.test_accuracy > 0.9
    # warmup-cosine: the lr rises, peaks at the demo's lr, and anneals towards 0
    peak = int(np.argmax(h.lr))
    assert 0 < peak < SHORT.steps // 4 and h.lr[0] < h.lr[peak]
    assert h.lr[peak] == pytest.approx(choices.optimizer_settings("adamw")["lr"])
    assert h.lr[-1] < 0.01 * h.lr[peak]


def test_same_seed_same_history_bit_for_bit(short_history):
    again = train(SHORT)
    assert again.loss == short_history.loss and again.lr == short_history.lr
    assert again.train_loss == short_history.train_loss
    other = train(TrainConfig(**{**SHORT.to_dict(), "seed": 1}))
    assert other.loss != short_history.loss


def test_checkpoint_resume_continues_exactly(tmp_path, short_history):
    data = load_dataset(np, seed=SHORT.seed, dtype=np.float32)
    first = Run(SHORT, np, data=data)
    first.train(until=47)
    path = tmp_path / "ck.npz"
    checkpoint.save(str(path), first)

    resumed = Run.from_saved(checkpoint.load(str(path)), np)
    assert resumed.step == 47
    h = resumed.train()
    assert h.loss == short_history.loss and h.lr == short_history.lr
    full = Run(SHORT, np, data=data)
    full.train()
    for a, b in zip(resumed.params, full.params):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("scheduler", list(choices.SCHEDULERS))
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_is_exact_for_each_scheduler(tmp_path, optimizer, scheduler):
    config = TrainConfig(optimizer=optimizer, scheduler=scheduler, steps=24, batch_size=16, hidden=(16,))
    whole = train(config)
    part = Run(config, np)
    part.train(until=11)
    checkpoint.save(str(tmp_path / "ck.npz"), part)
    rest = Run.from_saved(checkpoint.load(str(tmp_path / "ck.npz")), np).train()
    assert rest.loss == whole.loss and rest.lr == whole.lr


@pytest.mark.parametrize(
    "name, config",
    [
        ("adamw-warmup-cosine", TrainConfig(steps=24, batch_size=16, hidden=(8,))),
        ("sgd-onecycle", TrainConfig(optimizer="sgd", scheduler="onecycle", steps=24, batch_size=16, hidden=(8,), dtype="float64")),
    ],
)
def test_checkpoints_of_the_old_format_still_resume_exactly(capsys, tmp_path, name, config):
    """tests/data/demo-v1-*.npz were written by the demo before ms_optim.checkpoint, at step 11."""
    path = REPO / "tests" / "data" / f"demo-v1-{name}.npz"
    saved = checkpoint.load(str(path))
    assert saved.step == 11 and saved.config == config
    assert Run.from_saved(saved, np).train().loss == train(config).loss
    code, out, err = _cli(capsys, "--resume", str(path), "--quiet", "--device", "cpu", "--save", str(tmp_path / "new.ckpt"))
    assert code == 0 and "resuming at step 11" in out, err
    assert checkpoint.load(str(tmp_path / "new.ckpt")).step == 24  # and saved again in the new format


def test_divergence_is_reported_not_hidden():
    from ms_optim.demo.errors import DemoError

    with pytest.raises(DemoError, match="diverged"):
        train(TrainConfig(optimizer="sgd", lr=1e4, scheduler="constant", steps=30, batch_size=32))


def test_every_optimizer_of_the_package_is_offered():
    import ms_optim

    exported = {
        n.lower()
        for n in dir(ms_optim)
        if isinstance(getattr(ms_optim, n), type)
        and issubclass(getattr(ms_optim, n), ms_optim.Optimizer)
        and getattr(ms_optim, n) is not ms_optim.Optimizer
    }
    offered = set(choices.optimizer_classes())
    assert exported and exported - set(choices.NOT_FOR_DEMO) <= offered
    assert not offered & set(choices.NOT_FOR_DEMO)


def test_an_optimizer_the_demo_cannot_drive_is_refused_with_the_reason():
    with pytest.raises(DemoError, match="the demo cannot train with Muon: it updates 2-D parameters only"):
        choices.optimizer_class("Muon")


@pytest.mark.parametrize("name", list(choices.optimizer_classes()))
def test_every_optimizer_trains_the_demo(name):
    h = train(TrainConfig(optimizer=name, steps=60, batch_size=32, hidden=(32,)))
    assert np.isfinite(h.loss).all() and np.mean(h.loss[-10:]) < 0.8 * h.loss[0], name


# --- the command line --------------------------------------------------------------------


def _cli(capsys, *args):
    code = main(["demo", *args])
    out, err = capsys.readouterr()
    return code, out, err


FAST = ["--steps", "40", "--batch-size", "32", "--hidden", "32", "--device", "cpu"]


def test_default_cli_run_reports_accuracy_and_time(capsys):
    code, out, err = _cli(capsys, "--steps", "150", "--device", "cpu")
    assert code == 0, err
    assert "AdamW(" in out and "warmup-cosine" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("done: test accuracy") and "ms/step" in last
    assert "\r" in err and "loss" in err and "lr" in err  # the progress bar
    assert err.endswith("\n")


def test_quiet_has_no_progress_bar(capsys):
    code, out, err = _cli(capsys, *FAST, "--quiet")
    assert code == 0 and err == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optimizer", "nope"], "unknown optimizer 'nope'"),
        (["--lr", "-0.1"], "--lr"),
        (["--lr", "abc"], "--lr"),
        (["--steps", "0"], "--steps"),
        (["--scheduler", "zigzag"], "--scheduler"),
        (["--batch-size", "5000"], "--batch-size"),
        (["--warmup", "50", "--steps", "40"], "--warmup"),
        (["--compare", "adamw,nope"], "unknown optimizer 'nope'"),
        (["--compare", "adamw", "--save", "x.npz"], "--compare"),
        (["--resume", "/nonexistent/ck.npz"], "cannot read checkpoint"),
        (["--bogus"], "unrecognized arguments"),
        (["--optimizer", "sgd", "--lr", "1e4", "--scheduler", "constant", "--steps", "50"], "diverged"),
    ],
)
def test_bad_options_give_one_line_and_non_zero_exit(capsys, args, message):
    code, out, err = _cli(capsys, *args, "--device", "cpu", "--quiet")
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith("ms-optim demo: error:")
    assert "Traceback" not in err + out


def test_unreadable_checkpoints_are_one_line_errors(capsys, tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.arange(3))
    for path in (garbage, foreign, tmp_path):
        code, out, err = _cli(capsys, "--resume", str(path), "--device", "cpu")
        assert code != 0 and len(err.strip().splitlines()) == 1 and "checkpoint" in err, err


def test_gpu_request_without_gpu_is_one_line_error(capsys):
    if probe_gpu()[0] is not None:
        pytest.skip("a GPU is present: --device gpu is not an error here")
    code, out, err = _cli(capsys, "--device", "gpu", "--quiet")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "--device gpu" in err


def test_errors_in_a_real_process_have_no_traceback():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "ms_optim", "demo", "--optimizer", "nope"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_ctrl_c_stops_after_a_whole_step_and_saves_a_resumable_checkpoint(tmp_path):
    import signal
    import time

    ck = tmp_path / "ck.npz"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "ms_optim", "demo", "--device", "cpu", "--steps", "1000000", "--save", str(ck)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.read(1)  # the progress bar has started: training is under way
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted at step" in err
    saved = checkpoint.load(str(ck))
    assert 0 < saved.step < 1_000_000 and len(saved.loss) == saved.step
    run = Run.from_saved(saved, np)
    run.train(until=saved.step + 3)
    assert run.step == saved.step + 3


def test_top_level_command_dispatch(capsys):
    assert main(["--help"]) == 0 and "demo" in capsys.readouterr().out
    assert main([]) != 0
    assert main(["nope"]) != 0 and "unknown command" in capsys.readouterr().err


def test_list_names_every_optimizer_and_scheduler(capsys):
    code, out, _ = _cli(capsys, "--list")
    assert code == 0
    for name in [*choices.optimizer_classes(), *choices.SCHEDULERS]:
        assert f"  {name} " in out


def test_compare_prints_a_row_per_optimizer(capsys):
    names = ["adamw", "sgd", "adam"]
    code, out, err = _cli(capsys, *FAST, "--quiet", "--compare", ",".join(names))
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("optimizer"))
    assert all(h in lines[header] for h in ("final loss", "test acc", "ms/step"))
    rows = lines[header + 2 :]
    assert [r.split()[0] for r in rows] == names
    for r in rows:
        assert r.split()[-2].endswith("%")


def test_cli_save_and_resume_match_an_uninterrupted_run(capsys, tmp_path):
    ck = tmp_path / "ck.npz"
    code, out, err = _cli(capsys, *FAST, "--quiet", "--until", "15", "--save", str(ck))
    assert code == 0, err
    assert "stopped at step 15/40" in out
    code, resumed, err = _cli(capsys, "--resume", str(ck), "--quiet", "--device", "cpu", "--save", str(tmp_path / "end.npz"))
    assert code == 0, err
    assert "resuming at step 15" in resumed
    code, whole, err = _cli(capsys, *FAST, "--quiet", "--save", str(tmp_path / "whole.npz"))
    accuracy = [l.split(",")[0] for l in (resumed + whole).splitlines() if l.startswith("done")]
    assert len(accuracy) == 2 and accuracy[0] == accuracy[1]
    a, b = checkpoint.load(str(tmp_path / "end.npz")), checkpoint.load(str(tmp_path / "whole.npz"))
    assert a.loss == b.loss and a.lr == b.lr
    assert all(np.array_equal(p, q) for p, q in zip(a.params, b.params))
    # a conflicting option is refused rather than silently ignored
    code, _, err = _cli(capsys, "--resume", str(ck), "--optimizer", "sgd", "--device", "cpu")
    assert code != 0 and "differs from the checkpoint" in err


def test_plot_writes_a_png(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'plot' extra")
    from matplotlib.image import imread

    path = tmp_path / "curves.png"
    code, out, err = _cli(capsys, *FAST, "--quiet", "--plot", str(path))
    assert code == 0, err
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    image = imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400


def test_plot_without_matplotlib_is_one_line_error(capsys, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, out, err = _cli(capsys, *FAST, "--quiet", "--plot", str(tmp_path / "p.png"))
    assert code != 0 and err.strip().splitlines() == ["ms-optim demo: error: --plot needs matplotlib: pip install 'ms-optim[plot]'"]
    assert "done" not in out  # told before training, not after


def test_importing_ms_optim_does_not_import_cupy():
    code = "import sys, ms_optim, ms_optim.demo.cli; assert 'cupy' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=60)


def test_demo_on_the_gpu_matches_the_cpu():
    backend, why = probe_gpu()
    if backend is None:
        pytest.skip(f"no GPU: {why}")
    config = TrainConfig(steps=60, batch_size=32, dtype="float64")
    gpu = Run(config, backend.xp, backend.device).train()
    cpu = train(config)
    np.testing.assert_allclose(gpu.loss, cpu.loss, rtol=1e-6)
    assert abs(gpu.test_accuracy - cpu.test_accuracy) <= 1 / cpu.n_test


# --- resuming an edited or damaged checkpoint ---------------------------------------------

from tests import checkpoint_files as cf  # noqa: E402


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "ck.ckpt"
    run = Run(TrainConfig(steps=24, batch_size=16, hidden=(8,)), np)
    run.train(until=6)
    checkpoint.save(str(path), run)
    return path


def _extra(doc):
    return doc["extra"]


def _cfg(doc):
    return doc["extra"]["config"]


def _param_array(i, value):
    def change(doc, arrays):
        cf.replace_array(doc, arrays, _extra(doc)["params"][i], value)

    return change


def _demo_state(doc):
    return cf.state_entries(doc)[0]


# (id, change(doc, arrays), what the one-line error must name)
EDITS = [
    ("extra-format", lambda d, a: _extra(d).__setitem__("format", "ms_optim.demo/9"), "not a demo checkpoint"),
    ("config-missing", lambda d, a: _extra(d).pop("config"), "'config'"),
    ("config-list", lambda d, a: _extra(d).__setitem__("config", [1]), "'config'"),
    ("config-lacks-seed", lambda d, a: _cfg(d).pop("seed"), "config lacks seed"),
    ("config-unknown", lambda d, a: _cfg(d).__setitem__("momentum", 0.9), "momentum"),
    ("optimizer-unknown", lambda d, a: _cfg(d).__setitem__("optimizer", "lion"), "config.optimizer"),
    ("optimizer-int", lambda d, a: _cfg(d).__setitem__("optimizer", 3), "config.optimizer"),
    ("optimizer-other", lambda d, a: _cfg(d).__setitem__("optimizer", "sgd"), "config.optimizer"),
    ("lr-string", lambda d, a: _cfg(d).__setitem__("lr", "0.1"), "config.lr"),
    ("lr-negative", lambda d, a: _cfg(d).__setitem__("lr", -1), "config.lr"),
    ("lr-nan", lambda d, a: _cfg(d).__setitem__("lr", {"__float__": "nan"}), "config.lr"),
    ("scheduler-unknown", lambda d, a: _cfg(d).__setitem__("scheduler", "zigzag"), "config.scheduler"),
    ("scheduler-other", lambda d, a: _cfg(d).__setitem__("scheduler", "constant"), "config.scheduler"),
    ("steps-zero", lambda d, a: _cfg(d).__setitem__("steps", 0), "config.steps"),
    ("steps-float", lambda d, a: _cfg(d).__setitem__("steps", 24.5), "config.steps"),
    ("steps-bool", lambda d, a: _cfg(d).__setitem__("steps", True), "config.steps"),
    ("steps-below-step", lambda d, a: _cfg(d).__setitem__("steps", 3), "'step'"),
    ("warmup-too-big", lambda d, a: _cfg(d).__setitem__("warmup", 24), "config.warmup"),
    ("warmup-string", lambda d, a: _cfg(d).__setitem__("warmup", "5"), "config.warmup"),
    ("batch-zero", lambda d, a: _cfg(d).__setitem__("batch_size", 0), "config.batch_size"),
    ("batch-huge", lambda d, a: _cfg(d).__setitem__("batch_size", 10**6), "config.batch_size"),
    ("seed-negative", lambda d, a: _cfg(d).__setitem__("seed", -1), "config.seed"),
    ("seed-string", lambda d, a: _cfg(d).__setitem__("seed", "0"), "config.seed"),
    ("hidden-empty", lambda d, a: _cfg(d).__setitem__("hidden", []), "config.hidden"),
    ("hidden-zero", lambda d, a: _cfg(d).__setitem__("hidden", [0]), "config.hidden"),
    ("hidden-huge", lambda d, a: _cfg(d).__setitem__("hidden", [10**9]), "config.hidden"),
    ("hidden-str", lambda d, a: _cfg(d).__setitem__("hidden", "8"), "config.hidden"),
    ("hidden-other", lambda d, a: _cfg(d).__setitem__("hidden", [16]), "params"),
    ("dtype-other", lambda d, a: _cfg(d).__setitem__("dtype", "float64"), "params[0]"),
    ("dtype-unknown", lambda d, a: _cfg(d).__setitem__("dtype", "int8"), "config.dtype"),
    ("step-missing", lambda d, a: _extra(d).pop("step"), "'step'"),
    ("step-string", lambda d, a: _extra(d).__setitem__("step", "6"), "'step'"),
    ("step-negative", lambda d, a: _extra(d).__setitem__("step", -1), "'step'"),
    ("step-other", lambda d, a: _extra(d).__setitem__("step", 5), "history.loss"),
    ("params-short", lambda d, a: _extra(d)["params"].pop(), "'params'"),
    ("params-dict", lambda d, a: _extra(d).__setitem__("params", {}), "'params'"),
    ("params-number", lambda d, a: _extra(d)["params"].__setitem__(0, 1.0), "params[0]"),
    ("params-complex", _param_array(0, np.zeros((64, 8), np.complex64)), "['params'][0]"),
    ("params-int", _param_array(1, np.zeros(8, np.int32)), "params[1]"),
    ("params-float64", _param_array(1, np.zeros(8, np.float64)), "params[1]"),
    ("params-shape", _param_array(0, np.zeros((8, 64), np.float32)), "params[0]"),
    ("params-nan", _param_array(2, np.full((8, 10), np.nan, np.float32)), "params[2]"),
    ("params-object", _param_array(3, np.array([None] * 10)), "params"),
    ("history-missing", lambda d, a: _extra(d).pop("history"), "'history'"),
    ("history-lr-missing", lambda d, a: _extra(d)["history"].pop("lr"), "'history'"),
    ("history-list-str", lambda d, a: _extra(d)["history"].__setitem__("loss", ["a"] * 6), "history.loss"),
    ("history-short", lambda d, a: _extra(d)["history"].__setitem__("loss", [1.0] * 5), "history.loss"),
    ("history-nan", lambda d, a: _extra(d)["history"].__setitem__("lr", [{"__float__": "nan"}] * 6), "history.lr"),
    ("opt-lr-nan", lambda d, a: d["optimizer"]["state_dict"]["param_groups"][0].__setitem__("lr", {"__float__": "nan"}), "learning rate"),
    ("opt-step-other", lambda d, a: _demo_state(d).__setitem__("step", 3), "step 3"),
    ("opt-state-nan", lambda d, a: cf.replace_array(d, a, _demo_state(d)["exp_avg"], np.full((64, 8), np.nan, np.float32)), "non-finite"),
    ("opt-state-complex", lambda d, a: cf.replace_array(d, a, _demo_state(d)["exp_avg"], np.zeros((64, 8), complex)), "dtype"),
    ("opt-class", lambda d, a: d["optimizer"].__setitem__("class", "SGD"), "SGD"),
    ("sched-missing", lambda d, a: d.__setitem__("scheduler", None), "scheduler"),
    ("sched-base-lrs-nan", lambda d, a: d["scheduler"]["state_dict"].__setitem__("base_lrs", [{"__float__": "nan"}]), "NaN"),
    ("sched-epoch-other", lambda d, a: d["scheduler"]["state_dict"].__setitem__("last_epoch", 2), "scheduler state is at step 2"),
    ("sched-empty", lambda d, a: d["scheduler"].__setitem__("state_dict", {}), "lacks"),
    ("sched-warmup-steps", lambda d, a: d["scheduler"]["state_dict"].__setitem__("warmup_steps", 2), "config.scheduler builds 1"),
    ("sched-after-t-max", lambda d, a: d["scheduler"]["state_dict"]["after"].__setitem__("T_max", 0.5), "T_max"),
    ("opt-eps-edited", lambda d, a: d["optimizer"]["state_dict"]["param_groups"][0].__setitem__("eps", 1e-3), "'eps'] is 0.001"),
    ("opt-lr-edited", lambda d, a: d["optimizer"]["state_dict"]["param_groups"][0].__setitem__("lr", 1e9), "the schedule says"),
    ("opt-betas-edited", lambda d, a: d["optimizer"]["state_dict"]["param_groups"][0].__setitem__("betas", [0.5, 0.9]), "betas"),
    ("json-broken", None, "checkpoint.json"),
]


@pytest.mark.parametrize("change, fragment", [e[1:] for e in EDITS], ids=[e[0] for e in EDITS])
def test_resume_of_an_edited_checkpoint_is_one_line_naming_file_and_field(capsys, demo_checkpoint, tmp_path, change, fragment):
    bad = tmp_path / "edited.ckpt"
    if change is None:
        doc, arrays = cf.read_raw(demo_checkpoint)
        cf.write_raw(bad, doc, arrays, json_text='{"format": "ms_optim.checkpoint", ')
    else:
        cf.edit(demo_checkpoint, bad, change)
    code, out, err = _cli(capsys, "--resume", str(bad), "--device", "cpu", "--quiet")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    line = lines[0]
    assert line.startswith("ms-optim demo: error:") and str(bad) in line and fragment in line, line
    assert "internal error" not in line and " --" not in line  # never a flag the user did not pass
    assert "Traceback" not in err + out and "done" not in out


def test_the_unedited_checkpoint_resumes(capsys, demo_checkpoint):
    code, out, err = _cli(capsys, "--resume", str(demo_checkpoint), "--device", "cpu", "--quiet")
    assert code == 0 and "resuming at step 6" in out, err


@pytest.mark.parametrize("where", ["missing-folder", "a-folder", "read-only-folder"])
def test_a_bad_save_path_is_reported_before_training(capsys, tmp_path, where):
    if where == "missing-folder":
        target = tmp_path / "nope" / "ck.ckpt"
    elif where == "a-folder":
        target = tmp_path
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        target = folder / "ck.ckpt"
    code, out, err = _cli(capsys, *FAST, "--quiet", "--save", str(target))
    assert code == 1 and err.strip().splitlines()[0].startswith("ms-optim demo: error: --save"), err
    assert "done" not in out and "MLP" not in out  # told before the run starts


def test_a_killed_saves_temporaries_are_cleaned_by_the_next_save(capsys, tmp_path):
    import time

    old_style = tmp_path / ".ckpt-k1ll3d_x.tmp"  # what the demo's previous writer left when killed
    old_style.write_bytes(b"PK\x03\x04half a checkpoint")
    then = time.time() - 3600
    os.utime(old_style, (then, then))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    from ms_optim.checkpoint import _hostname

    ours = tmp_path / f".ck.ckpt.ckpt-{_hostname()}-{proc.pid}-0badf00d.tmp"
    ours.write_bytes(b"PK\x03\x04")
    keep = tmp_path / "notes.tmp"
    keep.write_text("mine")
    code, out, err = _cli(capsys, *FAST, "--quiet", "--save", str(tmp_path / "ck.ckpt"))
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["ck.ckpt", "notes.tmp"]


def test_clip_grad_norm_clips_every_step_and_resumes(tmp_path, capsys, monkeypatch):
    import ms_optim.demo.train as train_module

    norms = []
    real = train_module.clip_grad_norm_

    def recording(grads, max_norm):
        total = real(grads, max_norm)
        after = float(np.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads)))
        norms.append((float(total), after, max_norm))
        return total

    monkeypatch.setattr(train_module, "clip_grad_norm_", recording)
    path = tmp_path / "run.ckpt"
    code, out, err = _cli(capsys, *FAST, "--clip-grad-norm", "0.05", "--until", "10", "--save", str(path))
    assert code == 0, err
    assert len(norms) == 10 and all(m == 0.05 for _, _, m in norms)
    assert any(total > 0.05 for total, _, _ in norms), "the norms never exceeded the cap: the test shows nothing"
    for total, after, cap in norms:  # the cap holds after clipping, and smaller norms are left alone
        assert after <= cap * (1 + 1e-5) if total > cap else abs(after - total) <= 1e-5 * total
    code, out, err = _cli(capsys, *FAST, "--clip-grad-norm", "0.05", "--resume", str(path))
    assert code == 0, err
    assert len(norms) == 40  # the resumed run clips too: its config came from the checkpoint
    code, out, err = _cli(capsys, *FAST, "--clip-grad-norm", "-1")
    assert code != 0 and "--clip-grad-norm" in err
