#!/usr/bin/env bash
# Download, on a machine with PyPI, the wheels that benchmarks/gpu_check.sh installs on the
# GPU machine (which reaches no registry). Run it in the checkout the device tool sends, then
# name `.whl` in the run call's `carry` (benchmarks/README.md has the whole call).
#
# The GPU machine's python3 (3.12, CuPy 14 for CUDA 13, torch 2.11, numba, pytest, hypothesis,
# numpy 2.5, scipy, matplotlib, threadpoolctl, pytest-xdist) lacks only these; they are pure
# Python, and their one need (numpy) is there. The pins are the versions CI tests with.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
PACKAGES=(array-api-compat==1.16.0 array-api-strict==2.6.1 expecttest==0.3.0)

# .whl/ is in .gitignore: it never travels unless carried, and is never committed.
git check-ignore -q "$WHEELS/x.whl" || { echo "$WHEELS is not git-ignored; add it to .gitignore first" >&2; exit 1; }
mkdir -p "$WHEELS"
for spec in "${PACKAGES[@]}"; do
    # one version of each: two stop the whole install there
    name=${spec%%==*}
    rm -f "$WHEELS/${name//-/_}"-*.whl
done
# The device README's command, as it is.
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${PACKAGES[@]}"

# The GPU machine gets a copy of the working tree; this names the code it ran.
echo "$(git describe --always --dirty) $(git rev-parse HEAD)" > "$WHEELS/COMMIT"

for w in "$WHEELS"/*.whl; do
    needs=$(unzip -p "$w" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | sed 's/Requires-Dist: //' | tr '\n' ' ')
    echo "$(basename "$w")  needs: ${needs:-nothing}"
done
du -sh "$WHEELS"
