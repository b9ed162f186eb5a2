#!/usr/bin/env bash
# CUDA check: quantizer fits given GPU tensors (the tests that need a GPU), every task's train,
# eval and predict on a GPU (recommend on ml-100k: mmgrec, sasrec, tiger; retrieve on a documents
# file, with `index add`; text-to-image on digits), then the decoding benchmark. Each step runs in a fresh process under a time limit; a failed step is reported and the
# next one runs, so one pass shows every failure. Exit status: the number of failed steps.
#
# Usage: bash scripts/gpu_check.sh [OUT]   (default OUT: runs/gpu-check; needs `make install` first)
# Environment: DEVICE (default cuda; cpu runs the same steps on the CPU), INDEX (an ml-100k index
# folder from `semid index build`: skips building it), DOCS (a documents file; default: the first
# 2,000 debian-docs documents), QUICK=1 (a few epochs each: a smoke run), PYTHON (default python3),
# PARTS (default "quant rec docs img serve decoding": the parts to run), MODELS (default "mmgrec sasrec
# tiger"), PORT (default 8123, for serve).
set -uo pipefail

OUT=${1:-runs/gpu-check}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
SEMID=${SEMID:-$PYTHON -m semid.cli.main}
mkdir -p "$OUT"
PARTS=${PARTS:-quant rec docs img serve decoding}
PORT=${PORT:-8123}
MODELS=${MODELS:-mmgrec sasrec tiger}
failed=()
part() { [[ " $PARTS " == *" $1 "* ]]; }
epochs() { if [ "${QUICK:-0}" = 1 ]; then echo "--epochs $1"; fi; }

step() {  # step LIMIT_SECONDS NAME COMMAND...: run, time and record one step
  local limit=$1 name=$2; shift 2
  echo; echo "== $name: $*"
  local start=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "-- $name: exit $rc in $((SECONDS - start)) s"
  if [ $rc -ne 0 ]; then failed+=("$name (exit $rc)"); fi
}

step 30 gpu nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step 60 torch $PYTHON -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

recommend() {
  local index=${INDEX:-$OUT/index}
  if [ -z "${INDEX:-}" ]; then
    step 600 rec-index $SEMID index build --dataset ml-100k --quantizer graph_rqvae:3x256 --collisions popularity --device "$DEVICE" --out "$index"
  fi
  for model in $MODELS; do
    # shellcheck disable=SC2046
    step 900 "rec-train-$model" $SEMID train recommender --dataset ml-100k --index "$index" --model "$model" --device "$DEVICE" --out "$OUT/$model" $(epochs 3)
    step 300 "rec-eval-$model" $SEMID eval "$OUT/$model" --k 5 10 --split test --device "$DEVICE"
    step 120 "rec-predict-$model" $SEMID predict "$OUT/$model" --user 196 --k 10 --device "$DEVICE"
  done
  local first=${MODELS%% *}  # new items by text, embedded on the device, recommendable at once
  printf 'new-1\tHeat (1995), a crime thriller\nnew-2\tUp (2009), an animated adventure\n' > "$OUT/new_items.tsv"
  step 300 rec-add $SEMID index add "$OUT/$first" --items "$OUT/new_items.tsv" --device "$DEVICE"
  step 120 rec-predict-after-add $SEMID predict "$OUT/$first" --history "new-1" --k 5 --device "$DEVICE"
}

retrieve() {
  if [ -z "${DOCS:-}" ]; then
    DOCS=$OUT/docs.jsonl
    step 300 docs $PYTHON -c "import sys; from semid.data.registry import load_dataset; from semid.data.documents import write_documents; write_documents(sys.argv[1], load_dataset('debian-docs').documents[:2000])" "$DOCS"
  fi
  # shellcheck disable=SC2046
  step 900 doc-train $SEMID train retriever --dataset "$DOCS" --model promptdsi --device "$DEVICE" --out "$OUT/docs" $(epochs 2)
  step 300 doc-eval $SEMID eval "$OUT/docs" --k 1 10 --device "$DEVICE"
  step 600 doc-add $SEMID index add "$OUT/docs" --docs "$OUT/docs/later.jsonl" --device "$DEVICE"
  step 300 doc-eval-after-add $SEMID eval "$OUT/docs" --k 1 10 --device "$DEVICE"
  step 120 doc-predict $SEMID predict "$OUT/docs" --query "how do I configure the network" --k 5 --device "$DEVICE"
}

text_to_image() {
  # shellcheck disable=SC2046
  step 900 img-train $SEMID train retriever --dataset digits --model avg --device "$DEVICE" --out "$OUT/digits" $(epochs 1)
  step 300 img-eval $SEMID eval "$OUT/digits" --k 1 10 --device "$DEVICE"
  step 120 img-predict $SEMID predict "$OUT/digits" --query "a handwritten seven" --k 5 --device "$DEVICE"
}

serve_part() {  # `semid serve` of the recommender (trained by the rec part, else here) over HTTP
  local run=$OUT/mmgrec
  if [ ! -f "$run/manifest.json" ]; then
    # shellcheck disable=SC2046
    step 900 serve-train $SEMID train recommender --dataset ml-100k --index "${INDEX:-$OUT/index}" --model mmgrec --device "$DEVICE" --out "$run" $(epochs 2)
  fi
  $SEMID serve "$run" --port "$PORT" --device "$DEVICE" > "$OUT/serve.log" 2>&1 &
  local server=$!
  step 300 serve-requests $PYTHON - "$PORT" <<'PY'
import json, sys, time, urllib.error, urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(240):
    try:
        print("health", urllib.request.urlopen(base + "/health", timeout=2).read().decode())
        break
    except OSError:
        time.sleep(0.5)
print("info", urllib.request.urlopen(base + "/info").read().decode()[:300])


def post(body):
    request = urllib.request.Request(base + "/predict", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


status, answer = post({"users": ["196", "7"], "k": 3})
print("predict", status, json.dumps(answer)[:500])
assert status == 200 and len(answer["results"]) == 2, answer
started, n = time.perf_counter(), 20
for _ in range(n):
    post({"users": ["196"], "k": 10})
print(f"{n} sequential requests: {(time.perf_counter() - started) / n * 1000:.1f} ms each")
status, answer = post({"users": ["nobody"], "k": 3})
print("unknown user", status, answer)
assert status == 400, answer
PY
  kill "$server"; wait "$server"
  tail -2 "$OUT/serve.log"
}

decoding() {
  local decoding_device=$DEVICE
  case $DEVICE in cuda:*) decoding_device=cuda ;; esac
  step 900 decoding $PYTHON -m benchmarks.decoding --quick --device "$decoding_device" --out "$OUT/decoding"
}

if part quant; then  # skipped tests are no pass: the step fails without a GPU to run them on
  step 600 quant-gpu-tests $PYTHON -c "import sys, pytest, torch; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_quantizers.py', '-k', 'gpu']) or (not torch.cuda.is_available() and '$DEVICE' != 'cpu'))"
fi
if part rec; then recommend; fi
if part docs; then retrieve; fi
if part img; then text_to_image; fi
if part serve; then serve_part; fi
if part decoding; then decoding; fi

echo
if [ ${#failed[@]} -eq 0 ]; then
  echo "gpu_check: every step ran on $DEVICE; outputs in $OUT"
else
  echo "gpu_check: ${#failed[@]} step(s) failed on $DEVICE: ${failed[*]}"
fi
exit ${#failed[@]}
