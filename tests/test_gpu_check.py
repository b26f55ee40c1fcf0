"""The GPU check's scripts, kept working on machines without a GPU.

benchmarks/gpu_check.sh and benchmarks/bench_cuda.py run for real only on a
lent GPU machine, with minutes to spare: whatever can fail without a GPU must
fail here instead. So: the benchmark's cases and byte counts, its report and
goals from fake timings, its --dry-run end to end (NumPy and torch on the CPU),
the JUnit summary, and the shell script's --dry-run with a wheel built here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load("bench_cuda")
junit_summary = _load("junit_summary")


def test_cases_hold_exactly_the_elements_and_tensors_the_issue_names():
    for case, tensors, total, smallest in (("1x1e8", 1, 10**8, 10**8), ("200x1e8", 200, 10**8, 640),
                                           ("200x1e6", 200, 10**6, 64)):
        sizes = bench.case_sizes(case, 1.0)
        assert (len(sizes), sum(sizes), min(sizes)) == (tensors, total, smallest), case
    with pytest.raises(ValueError, match="too small"):
        bench.transformer_sizes(100, 200)


def test_minimal_traffic_per_element():
    # read p, g, state; write p, state; float32: Adam(W) 7 arrays, the others 5
    assert {k: a.bytes_per_element for k, a in bench.ALGOS.items()} == \
        {"adamw": 28, "adam": 28, "sgd": 20, "adagrad": 20, "rmsprop": 20}


def _row(algo, case, impl, ms, n=10**8, tensors=200):
    a = bench.ALGOS[algo]
    return dict(algo=algo, case=case, tensors=tensors, elements=n, min_bytes=a.bytes_per_element * n, impl=impl,
                ms=ms, min_ms=ms * 0.9, host_ms=ms / 2, gbps=a.bytes_per_element * n / (ms * 1e-3) / 1e9)


def _fake_report():
    rows = []
    for algo, case, ms, fused, foreach, n in (
        ("adamw", "1x1e8", 0.7, 0.8, 2.0, 10**8),       # 28e8 B in 0.7 ms: 4000 GB/s, the ceiling below
        ("adamw", "200x1e8", 0.88, 0.8, 2.0, 10**8),    # 1.10x fused: a miss
        ("adamw", "200x1e6", 0.05, 0.2, 0.4, 10**6),    # 0.25x fused: a pass
        ("rmsprop", "200x1e6", 0.3, None, 0.6, 10**6),  # no fused RMSprop in torch
    ):
        group = [_row(algo, case, "ms_optim", ms, n), _row(algo, case, "torch-foreach", foreach, n)]
        if fused:
            group.append(_row(algo, case, "torch-fused", fused, n))
        for r in group:
            r["x_fused"] = r["ms"] / fused if fused else None
            r["x_foreach"] = r["ms"] / foreach
            r["rel_diff"] = 0.0 if r["impl"] == "torch-fused" else 3e-7
        rows += group
    rows.append(dict(algo="sgd", case="1x1e8", tensors=1, elements=10**8, min_bytes=0, impl="ms_optim",
                     error="CUDARuntimeError: an illegal memory access"))
    return dict(
        dry_run=False, rows=rows, notes=["adam 1x1e8: skipped, 151 s over the --budget-s 150"],
        facts=dict(gpu="NVIDIA H200", compute_capability="sm_90", memory_gib=139.8, driver="580.159.04",
                   cuda_driver_api="13.0", cuda_runtime="13.0", nvrtc="13.0", cupy="14.2.0", torch="2.11.0+cu130",
                   torch_cuda="13.0", numpy="2.5.2", python="3.12.3", ms_optim_commit="abc1234"),
        config=dict(algos=["adamw", "sgd", "rmsprop"], cases=list(bench.CASES), impls=list(bench.DEFAULT_IMPLS),
                    warmup=3, repeats=20, burst=10, copy_mib=1024, scale=1.0,
                    case_sizes={c: dict(tensors=len(s), elements=sum(s), smallest=min(s), largest=max(s))
                                for c in bench.CASES for s in [bench.case_sizes(c, 1.0)]}),
        copy={"memcpy start": 3900.0, "kernel start": 4000.0, "ceiling": 4000.0},
        fused=dict(adamw=dict(supported=True, why=""), sgd=dict(supported=True, why=""),
                   rmsprop=dict(supported=False, why="TypeError: unexpected keyword argument 'fused'")),
    )


def test_report_from_fake_timings_names_the_machine_and_checks_the_goals(tmp_path):
    report = _fake_report()
    text = bench.write(report, tmp_path / "bench.txt")
    assert (tmp_path / "bench.txt").read_text() == text
    assert json.loads((tmp_path / "bench.json").read_text())["goals"] == report["goals"]
    for fact in ("NVIDIA H200", "driver 580.159.04", "runtime 13.0", "cupy 14.2.0", "torch 2.11.0+cu130"):
        assert fact in text
    assert "RMSprop no (TypeError" in text
    goals = {(g["algo"], g["case"]): g for g in report["goals"]}
    assert goals["adamw", "1x1e8"]["status"] == "PASS" and goals["adamw", "1x1e8"]["value"] == pytest.approx(100)
    assert goals["adamw", "200x1e8"]["status"] == "MISS" and goals["adamw", "200x1e8"]["value"] == pytest.approx(1.1)
    assert goals["adamw", "200x1e6"]["status"] == "PASS" and goals["adamw", "200x1e6"]["value"] == pytest.approx(.25)
    assert goals["rmsprop", "200x1e6"]["status"] == "n/a" and "vs foreach: 0.50x" in goals["rmsprop", "200x1e6"]["why"]
    assert goals["sgd", "200x1e6"]["status"] == "n/a"  # no row was measured
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("adamw    200x1e8") and "ms_optim" in line)
    assert row.split()[-4:] == ["80", "1.10", "0.44", "3.0e-07"]  # % copy, x fused, x foreach, rel diff
    assert any("sgd" in line and "illegal memory access" in line for line in lines)
    assert "# note: adam 1x1e8: skipped" in text


def test_bench_arguments_are_checked():
    with pytest.raises(SystemExit):
        bench._parse_args(["--algos", "adamw,lamb"])
    args = bench._parse_args(["--dry-run"])
    assert (args.scale, args.repeats, args.copy_mib) == (bench.DRY_RUN_SCALE, 3, 4)
    assert bench._parse_args([]).scale == 1.0


def test_bench_dry_run_end_to_end(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bench.txt"
    rc = bench.main(["--dry-run", "--algos", "adamw,rmsprop", "--cases", "200x1e6", "--repeats", "1",
                     "--burst", "1", "--copy-mib", "1", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["fused"]["adamw"]["supported"] and not report["fused"]["rmsprop"]["supported"]
    impls = {(r["algo"], r["impl"]): r for r in report["rows"]}
    assert set(impls) == {("adamw", "ms_optim"), ("adamw", "torch-fused"), ("adamw", "torch-foreach"),
                          ("rmsprop", "ms_optim"), ("rmsprop", "torch-foreach")}
    assert all("error" not in r for r in report["rows"]), report["rows"]
    # ms_optim's eager backend and torch computed the same steps (float32 rounding apart)
    assert impls["adamw", "ms_optim"]["rel_diff"] < 1e-4
    assert impls["rmsprop", "ms_optim"]["rel_diff"] < 1e-4
    assert "DRY RUN" in out.read_text()


def test_junit_summary_counts_outcomes_and_lists_failures(tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad[cupy]"><failure message="assert 1 == 2">x</failure>'
        '</testcase><testcase classname="tests.test_b" name="test_gone"><skipped message="no CUDA GPU"/></testcase>'
        '<testcase classname="tests.test_b" name="test_err"><error message="fixture broke"/></testcase>'
        '</testsuite></testsuites>')
    lines = junit_summary.summarize(xml)
    assert lines[0] == "4 tests: 1 passed, 1 failed, 1 errors, 1 skipped"
    assert "  skipped 1x: no CUDA GPU" in lines
    assert any("FAILURE tests.test_a::test_bad[cupy]: assert 1 == 2" in line for line in lines)
    assert "no JUnit file" in junit_summary.summarize(tmp_path / "missing.xml")[0]


def _probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel: what the install stage does with the real ones, offline."""
    folder.mkdir()
    path = folder / "gpu_check_probe-0.1-py3-none-any.whl"
    files = {
        "gpu_check_probe/__init__.py": "VALUE = 1\n",
        "gpu_check_probe-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: gpu-check-probe\nVersion: 0.1\n",
        "gpu_check_probe-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                               "Tag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr("gpu_check_probe-0.1.dist-info/RECORD", "".join(f"{n},,\n" for n in [*files, "RECORD"]))
    return path


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_gpu_check_dry_run_installs_collects_and_smokes(tmp_path):
    pytest.importorskip("pip")
    _probe_wheel(tmp_path / "wheels")
    out, site = tmp_path / "out", tmp_path / "site"
    env = {**os.environ, "OUT": str(out), "SITE": str(site), "WHEELS": str(tmp_path / "wheels"),
           "PYTHON": sys.executable, "STAGES": "install facts smoke tests", "TEST_PATHS": "tests/test_docs.py",
           "TEST_K": "ms_optim", "PYTHONPATH": ""}
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "gpu_check_probe" / "__init__.py").is_file()
    assert "stage install: rc=0" in summary and "stage facts: rc=0" in summary and "stage smoke: rc=0" in summary
    # the count it reports is the selection it listed, and the selection is the one asked for
    ids = [line for line in (out / "tests.log").read_text().splitlines() if "::" in line]
    assert ids and all(line.startswith("tests/test_docs.py::") and "ms_optim" in line for line in ids)
    assert re.search(rf"collected: {len(ids)}\b(/\d+)? tests collected", summary), summary
    assert '"gpu": "none (dry run' in (out / "facts.txt").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["facts.txt", "summary.txt", "tests.log"]


#: every CuPy and torch name GpuDevice and Impl call on the GPU machine, checked
#: here where both import without a GPU: a typo must not cost a GPU run
GPU_NAMES = {
    "cupy": ["asarray", "empty_like", "all", "abs", "sum", "float32", "float64", "ndarray", "from_dlpack",
             "ElementwiseKernel", "get_default_memory_pool", "random.default_rng", "cuda.Event", "cuda.Device",
             "cuda.get_elapsed_time", "cuda.MemoryPointer.copy_from_device_async", "cuda.nvrtc.getVersion",
             "cuda.runtime.getDeviceCount", "cuda.runtime.deviceSynchronize", "cuda.runtime.memGetInfo",
             "cuda.runtime.getDeviceProperties", "cuda.runtime.driverGetVersion", "cuda.runtime.runtimeGetVersion",
             "cuda.MemoryPool.free_all_blocks",
             "random.Generator.standard_normal", "cuda.Event.record", "cuda.Event.synchronize"],
    "torch": ["tensor", "cuda.is_available", "cuda.Event", "cuda.Event.record", "cuda.Event.synchronize",
              "cuda.Event.elapsed_time", "cuda.empty_cache", "cuda.get_device_name", "version.cuda",
              "optim.AdamW", "optim.Adam", "optim.SGD", "optim.Adagrad", "optim.RMSprop"],
}


@pytest.mark.parametrize("module", sorted(GPU_NAMES))
def test_the_gpu_path_calls_only_names_that_exist(module):
    import functools

    mod = pytest.importorskip(module)
    missing = []
    for name in GPU_NAMES[module]:
        try:
            functools.reduce(getattr, name.split("."), mod)
        except AttributeError:
            missing.append(name)
    assert not missing, f"{module} {mod.__version__} has no {missing}"
