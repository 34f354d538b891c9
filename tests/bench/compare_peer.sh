#!/usr/bin/env bash
# condensa against the PyTorch eager peer on the d512 shape (docs/performance.md), one thread,
# alternating the two programs, ROUNDS rounds per dtype. Prints one line per run and a table of
# medians and the ratio.
#   tests/bench/compare_peer.sh PEER_DIR [PYTHON] [ROUNDS] [DTYPES]
#   e.g. tests/bench/compare_peer.sh ../shared/peer python3 2 "fp32 bf16"
# PYTHON must import torch (the same LibTorch version as the build, for a fair comparison).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
peer="${1:?usage: compare_peer.sh PEER_DIR [PYTHON] [ROUNDS] [DTYPES]}"
python="${2:-python3}"
rounds="${3:-2}"
dtypes="${4:-fp32 bf16}"
bin="${CONDENSA_BIN:-$root/build/condensa}"
steps="${STEPS:-12}"
warmup="${WARMUP:-3}"
json_field() { sed -n 's/.*"'"$1"'": \([0-9.e+-]*\).*/\1/p' | tail -1; }
declare -A ours theirs
for dtype in $dtypes; do
  for r in $(seq "$rounds"); do
    c=$("$bin" bench train --config "$root/tests/bench/d512.yaml" --set train.dtype="$dtype" \
      --steps "$steps" --warmup "$warmup" | json_field tokens_per_s)
    amp=""
    [ "$dtype" = bf16 ] && amp="--dtype bf16 --amp" || amp="--dtype fp32"
    # shellcheck disable=SC2086
    p=$("$python" "$peer/py_train_bench.py" --hidden 512 --layers 4 --dense 1 --heads 8 \
      --experts 8 --topk 2 --moe-inter 512 --inter 1536 --vocab 259 --seq 512 --batch 4 \
      --kv-lora 128 --nope 64 --rope 32 --vdim 64 --threads 1 --steps "$steps" \
      --warmup "$warmup" $amp | json_field tokens_per_s)
    awk -v d="$dtype" -v r="$r" -v c="$c" -v p="$p" \
      'BEGIN {printf "%s round %s: condensa %.1f tok/s, peer %.1f tok/s, ratio %.2fx\n", d, r, c, p, c / p}'
    ours[$dtype]+="$c "
    theirs[$dtype]+="$p "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
echo "| dtype | condensa tok/s | peer tok/s | ratio |"
echo "|---|---:|---:|---:|"
for dtype in $dtypes; do
  c=$(echo "${ours[$dtype]}" | median)
  p=$(echo "${theirs[$dtype]}" | median)
  awk -v d="$dtype" -v c="$c" -v p="$p" 'BEGIN {printf "| %s | %.0f | %.0f | %.2fx |\n", d, c, p, c / p}'
done
