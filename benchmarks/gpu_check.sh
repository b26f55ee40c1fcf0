#!/usr/bin/env bash
# The GPU check of issue 12 in one call on the H200 machine: install the carried wheels, record
# the machine, launch one kernel, run the GPU part of the suite, run the GPU benchmark. Every
# stage runs whatever the ones before it did (a failing test run does not stop the benchmark);
# each has its own timeout, and all of them together end within GPU_CHECK_TOTAL_S (450 s).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, after benchmarks/gpu_wheels.sh here
#   bash benchmarks/gpu_check.sh --dry-run  # here, without a GPU: every path but the GPU's
#
# Writes into $OUT (a temporary folder when unset): summary.txt (each stage's status and time,
# test counts, failures, the goals), facts.txt, tests.log, tests.xml, bench.txt, bench.json,
# bench.log: 7 files, where the device tool brings back 8 at most.
#
# Knobs (environment): STAGES ("install facts smoke tests bench"), PYTHON (python3),
# WHEELS (.whl), SITE (/tmp/site; a temporary folder with --dry-run), TEST_PATHS ("tests"),
# TEST_K ("(cupy or gpu or test_cuda_backend or test_cuda_kernels) and not test_gpu_check"),
# XDIST (auto: 8 workers where pytest-xdist imports; a number; 0 for none), TESTS_TIMEOUT (240),
# BENCH_TIMEOUT (200), BENCH_ARGS (extra bench_cuda.py arguments), GPU_CHECK_TOTAL_S (450).
set -u
cd "$(dirname "$0")/.."
REPO=$PWD

DRY=0
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg (known: --dry-run)" >&2; exit 2 ;;
    esac
done

OUT=${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
if [ -z "${SITE:-}" ]; then
    if [ $DRY = 1 ]; then
        SITE=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
        trap 'rm -rf "$SITE"' EXIT  # ours alone
    else
        SITE=/tmp/site
    fi
fi
STAGES=${STAGES:-install facts smoke tests bench}
TEST_PATHS=${TEST_PATHS:-tests}
# every test on the cupy namespace, the two CUDA files, the demo's GPU tests; not this script's own
TEST_K=${TEST_K-(cupy or gpu or test_cuda_backend or test_cuda_kernels) and not test_gpu_check}
XDIST=${XDIST:-auto}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-240}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-200}
BENCH_ARGS=${BENCH_ARGS:-}
TOTAL=${GPU_CHECK_TOTAL_S:-450}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 DRY
SUMMARY=$OUT/summary.txt
FAILED=()

say() { echo "$*" | tee -a "$SUMMARY"; }
wants() { [[ " $STAGES " == *" $1 "* ]]; }
left() { echo $((TOTAL - SECONDS)); }

# run_stage NAME LOG CMD...: run CMD with its output in LOG, and note its status and time.
run_stage() {
    local name=$1 log=$2 t0=$SECONDS rc
    shift 2
    "$@" >>"$log" 2>&1
    rc=$?
    say "stage $name: rc=$rc$([ $rc = 124 ] && echo ' (timed out)') in $((SECONDS - t0)) s"
    [ $rc = 0 ] || FAILED+=("$name")
    return $rc
}

: >"$SUMMARY"
say "gpu_check.sh $([ $DRY = 1 ] && echo '--dry-run ')at $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname); OUT=$OUT"
say "stages: $STAGES; python: $(command -v "$PYTHON")"

# --- install: the carried wheels into $SITE, ahead of everything on the path ----------------
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ -f "$WHEELS/COMMIT" ]; then export MS_OPTIM_COMMIT; MS_OPTIM_COMMIT=$(cut -d' ' -f1 "$WHEELS/COMMIT"); fi
install_wheels() {
    shopt -s nullglob
    local wheels=("$WHEELS"/*.whl)
    shopt -u nullglob
    if [ ${#wheels[@]} = 0 ]; then echo "no wheels in $WHEELS: run benchmarks/gpu_wheels.sh and carry .whl"; return 1; fi
    printf '  %s\n' "${wheels[@]##*/}"
    # the device README's install line, into $SITE
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" || return 1
    "$PYTHON" - <<'EOF'
import importlib
for name in ("array_api_compat", "array_api_strict", "expecttest"):
    try:
        m = importlib.import_module(name)
        print(f"  {name} {getattr(m, '__version__', '?')} from {m.__file__}")
    except ImportError as exc:
        print(f"  {name}: {exc}")
EOF
}
if wants install; then
    run_stage install "$SUMMARY" install_wheels
fi

# --- facts: the machine, its GPU, driver, CUDA and library versions -------------------------
facts() {
    echo "## date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"; uname -a; echo "cpus: $(nproc)"
    free -g 2>/dev/null | head -2
    echo "## nvidia-smi"
    if command -v nvidia-smi >/dev/null; then
        timeout 60 nvidia-smi
        timeout 60 nvidia-smi --query-gpu=name,driver_version,memory.total,pstate,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu --format=csv
    else
        echo "nvidia-smi: not found"
    fi
    echo "## python"; "$PYTHON" --version
    "$PYTHON" -m pip list 2>/dev/null | grep -iE '^(cupy|torch |numpy|numba|pytest|hypothesis|array|expecttest|cuda|nvidia-cuda-(nvrtc|runtime)|scipy|threadpoolctl|matplotlib)' || true
    echo "## compilers"; (g++ --version 2>&1 | head -1) || true; (nvcc --version 2>&1 | tail -2) || true
    echo "## bench_cuda.py --facts"
    timeout 120 "$PYTHON" benchmarks/bench_cuda.py --facts $([ $DRY = 1 ] && echo --dry-run)
}
if wants facts; then
    run_stage facts "$OUT/facts.txt" facts
    sed -n '/^## bench_cuda.py --facts/,$p' "$OUT/facts.txt" | tail -n +2 | "$PYTHON" -c '
import json, sys
try:
    print("  " + "; ".join(f"{k} {v}" for k, v in json.load(sys.stdin).items()))
except ValueError:
    print("  (no facts from bench_cuda.py --facts)")' >>"$SUMMARY"
fi

# --- smoke: the first kernel launch, AdamW on CuPy arrays against NumPy eager ----------------
smoke() {
    timeout 180 "$PYTHON" - <<'EOF'
import os
import sys

import numpy as np

import ms_optim
from ms_optim.engine import backend_for
from ms_optim.engine.namespace import array_namespace

if os.environ.get("DRY") == "1":
    xp, backend = np, "eager"
else:
    import cupy as xp
    backend = "cuda"
rng = np.random.default_rng(0)
host = [rng.standard_normal(n).astype(np.float32) for n in (1000, 70001, 3)]
grads = [rng.standard_normal(h.shape).astype(np.float32) for h in host]
params = [xp.asarray(h.copy()) for h in host]  # NumPy's asarray would not copy
ref = [h.copy() for h in host]
opt = ms_optim.AdamW(params, lr=1e-2, backend=backend)
ref_opt = ms_optim.AdamW(ref, lr=1e-2, backend="eager")
for _ in range(3):
    opt([xp.asarray(g) for g in grads])
    ref_opt(grads)
got = [p.get() if hasattr(p, "get") else p for p in params]
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(got, ref))
moved = max(float(np.max(np.abs(a - h))) for a, h in zip(got, host))
auto = backend_for(array_namespace(params[0])).name
print(f"  smoke: AdamW, 3 steps on {xp.__name__} arrays, backend {backend} (auto picks {auto}): "
      f"max |diff| vs NumPy eager {diff:.2e}, moved {moved:.2e}")
sys.exit(0 if diff < 1e-5 and moved > 1e-3 else 1)
EOF
}
if wants smoke; then
    run_stage smoke "$SUMMARY" smoke
fi

# --- tests: the GPU part of the suite --------------------------------------------------------
read -ra test_paths <<<"$TEST_PATHS"  # paths hold no spaces
PYTEST=("$PYTHON" -m pytest -p no:cacheprovider "${test_paths[@]}")
[ -n "$TEST_K" ] && PYTEST+=(-k "$TEST_K")
if wants tests; then
    say "tests: $TEST_PATHS -k '$TEST_K'"
    # How many tests the selection holds, here and there: a GPU run must not quietly run fewer.
    timeout 120 "${PYTEST[@]}" --collect-only -q >"$OUT/tests.log" 2>&1
    say "  collected: $(grep -E 'tests? collected|no tests ran|error' "$OUT/tests.log" | tail -1)"
    if [ $DRY = 1 ]; then
        say "  dry run: not running them"
    else
        workers=()
        if [ "$XDIST" = auto ]; then
            "$PYTHON" -c 'import xdist' 2>/dev/null && workers=(-n 8)
        elif [ "$XDIST" != 0 ]; then
            workers=(-n "$XDIST")
        fi
        t=$(( $(left) - 170 ))  # leave the benchmark its time
        [ "$t" -gt "$TESTS_TIMEOUT" ] && t=$TESTS_TIMEOUT
        if [ "$t" -lt 30 ]; then
            say "stage tests: skipped, $(left) s left"; FAILED+=(tests)
        else
            echo "## run: ${workers[*]} timeout ${t}s" >>"$OUT/tests.log"
            # SIGINT, not TERM: pytest then prints its summary and writes the JUnit file
            run_stage tests "$OUT/tests.log" timeout -s INT -k 30 "$t" "${PYTEST[@]}" "${workers[@]}" \
                -v --tb=short -rfE -o faulthandler_timeout=120 --junitxml="$OUT/tests.xml"
            "$PYTHON" benchmarks/junit_summary.py --failures 25 "$OUT/tests.xml" | sed 's/^/  /' >>"$SUMMARY"
        fi
    fi
fi

# --- bench: ms_optim against torch fused / foreach, with the copy bandwidth ------------------
if wants bench; then
    t=$(( $(left) - 5 ))
    [ "$t" -gt "$BENCH_TIMEOUT" ] && t=$BENCH_TIMEOUT
    if [ "$t" -lt 60 ]; then
        say "stage bench: skipped, $(left) s left"; FAILED+=(bench)
    else
        # --budget-s: start no case that could not end before the timeout
        # shellcheck disable=SC2086
        run_stage bench "$OUT/bench.log" timeout -s INT -k 20 "$t" "$PYTHON" benchmarks/bench_cuda.py \
            --out "$OUT/bench.txt" --budget-s $((t - 45)) $([ $DRY = 1 ] && echo --dry-run) $BENCH_ARGS
        if [ -f "$OUT/bench.txt" ]; then
            sed -n '/^goals/,$p' "$OUT/bench.txt" | sed 's/^/  /' >>"$SUMMARY"
        else
            tail -5 "$OUT/bench.log" | sed 's/^/  /' >>"$SUMMARY"
        fi
    fi
fi

say "done in $SECONDS s; failed stages: ${FAILED[*]:-none}"
# The device tool returns the last 12,000 characters of output: the report, then the summary.
[ -f "$OUT/bench.txt" ] && cat "$OUT/bench.txt"
echo "=== summary ($SUMMARY)"
cat "$SUMMARY"
[ ${#FAILED[@]} = 0 ]
