#!/usr/bin/env bash
# The GPU check, in one run on the GPU test machine (docs/performance.md, "GPU"): build against
# the machine's LibTorch, the CUDA correctness tests, `bench train` on gpu-bench.yaml (explicit
# attention and the loop experts as references, then the defaults), `bench moe` over NCCL, and
# the PyTorch peer on the same shape. Logs go to ${OUT:-/tmp/gpu-out}; a table is printed last.
#   here:  ../shared/gpu/prepare.sh        (fills .device/)
#   there: bash tests/bench/gpu.sh SHARED_DIR   (SHARED_DIR holds gpu/gpu-bench.yaml and peer/)
set -uo pipefail
shared="${1:?usage: tests/bench/gpu.sh SHARED_DIR}"
out="${OUT:-/tmp/gpu-out}"
mkdir -p "$out"
t0=$(date +%s)
bash .device/build.sh condensa condensa_unit_tests >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
source /tmp/b/env.sh
echo "build: $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
/tmp/b/condensa_unit_tests --gtest_filter='GroupedExperts.*:FusedAttention.*:Router.ScoresStayFp32*' \
  >"$out/cuda-tests.log" 2>&1
echo "CUDA tests: $(grep -E '^\[  (PASSED|FAILED)' "$out/cuda-tests.log" | tr '\n' ' ')"
cfg="$shared/gpu/gpu-bench.yaml"
bench() {  # name, extra --set flags
  local name=$1; shift
  /tmp/b/condensa bench train --config "$cfg" --steps 10 --warmup 3 "$@" >"$out/bench-$name.log" 2>&1
  echo "$name: $(grep -o '"tokens_per_s": [0-9.]*' "$out/bench-$name.log") $(grep -o '"mfu": [0-9.]*' "$out/bench-$name.log")"
}
bench explicit-loop --set model.attention_impl=explicit --set model.experts_impl=loop
bench sdpa-loop --set model.experts_impl=loop
bench default
bench default-profile --profile "$out/trace.json" --steps 5
/tmp/b/condensa bench moe --config "$cfg" --iters 20 >"$out/bench-moe.log" 2>&1
moe_rc=$?
echo "bench moe (nccl): exit $moe_rc; $(grep -E '^ +(route|dispatch|experts|combine) ' "$out/bench-moe.log" | tr -s ' ' | tr '\n' ';')"
/tmp/b/condensa train "$cfg" --set train.steps=200 --set log.every=10 --set run.dir=/tmp/gpu-run \
  >"$out/train-200.log" 2>&1
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open("/tmp/gpu-run/metrics.jsonl") if '"moe"' in l]
for r in rows[:: max(1, len(rows) // 10)] + rows[-1:]:
    print(f"step {r['step']}: loss {r['loss']:.3f}, worst max/mean load {r['max_mean_load']:.2f}")
PY
python3 "$shared/peer/py_train_bench.py" --hidden 2048 --layers 6 --dense 1 --heads 16 --experts 32 \
  --topk 4 --moe-inter 768 --inter 5632 --shared 1 --vocab 259 --seq 2048 --batch 8 --kv-lora 512 \
  --nope 128 --rope 64 --vdim 128 --q-lora 768 --device cuda --amp --steps 10 --warmup 3 --sdpa \
  | tee "$out/peer.json"
echo "total: $(( $(date +%s) - t0 )) s"
