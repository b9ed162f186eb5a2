#!/usr/bin/env bash
# CUDA check: the ml-100k demo (index, train, eval), predict and the decoding benchmark on a GPU.
# Usage: bash scripts/gpu_check.sh [OUT]   (default OUT: runs/gpu-check; needs `make install` first)
set -euo pipefail

OUT=${1:-runs/gpu-check}
step() { echo; echo "== $*"; "$@"; }

step nvidia-smi --query-gpu=name,memory.total --format=csv
step python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
step semid index build --dataset ml-100k --quantizer graph_rqvae:3x256 --collisions popularity --out "$OUT/index"
step semid train recommender --dataset ml-100k --index "$OUT/index" --model mmgrec --device cuda --out "$OUT/mmgrec"
step semid eval "$OUT/mmgrec" --k 5 10 --split test --device cuda
step semid predict "$OUT/mmgrec" --user 196 --k 10 --device cuda
step python -m benchmarks.decoding --quick --device cuda --out "$OUT/decoding"
echo; echo "gpu_check: all steps ran on CUDA; outputs in $OUT"
