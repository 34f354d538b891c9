#!/usr/bin/env bash
# Checks that a change leaves training bitwise unchanged: trains configs/tiny.yaml for 30 steps
# with the current build and with a build of BASE_REV, on 1 rank and on `mpirun -np 4` with
# expert parallel 4 and ZeRO-1, and compares every logged number in metrics.jsonl except the
# timings (tokens/s, MFU, ETA) for exact equality.
#
#   tests/tools/compare_loss_curves.sh BASE_REV            # builds BASE_REV in a worktree
#   tests/tools/compare_loss_curves.sh --base-binary PATH  # an already built condensa
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${CONDENSA_BUILD_DIR:-$root/build}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ "${1:-}" = "--base-binary" ]; then
  base_bin="$2"
else
  rev="${1:?usage: $0 BASE_REV | --base-binary PATH}"
  git -C "$root" worktree add --detach "$work/base" "$rev" >/dev/null
  trap 'git -C "$root" worktree remove --force "$work/base"; rm -rf "$work"' EXIT
  CONDENSA_BUILD_DIR="$work/base/build" "$work/base/launch/build.sh" condensa >/dev/null
  base_bin="$work/base/build/condensa"
fi
new_bin="$build/condensa"
[ -x "$new_bin" ] || { echo "no $new_bin: run launch/build.sh first" >&2; exit 1; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
common=(--set train.steps=30 --set log.every=1 --set checkpoint.every=10)
run() {  # run NAME BINARY LAUNCHER...
  local name="$1" bin="$2"
  shift 2
  "$@" "$bin" train "$root/configs/tiny.yaml" --set run.dir="$work/$name" "${common[@]}" \
    "${extra[@]}" >"$work/$name.log" 2>&1 || { cat "$work/$name.log"; exit 1; }
}
for layout in 1 4; do
  if [ "$layout" = 1 ]; then
    launcher=()
    extra=()
  else
    launcher=(mpirun --oversubscribe -np 4 -x OMP_NUM_THREADS)
    extra=(--set parallel.expert_parallel=4 --set parallel.zero_stage=1
      --set train.micro_batch_size=1)
  fi
  run "base$layout" "$base_bin" "${launcher[@]}"
  run "new$layout" "$new_bin" "${launcher[@]}"
  python3 - "$work/base$layout/metrics.jsonl" "$work/new$layout/metrics.jsonl" "$layout" <<'PY'
import json, sys
timing = {"tokens_per_s", "mfu", "eta_s"}
def load(p):
    out = []
    for line in open(p):
        j = json.loads(line)
        out.append({k: v for k, v in j.items() if k not in timing})
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
steps = sum(1 for r in a if "loss" in r)
if steps < 30 or a != b:
    for ra, rb in zip(a, b):
        if ra != rb:
            print("first difference:\n base", json.dumps(ra)[:400], "\n new ", json.dumps(rb)[:400])
            break
    sys.exit(f"world {sys.argv[3]}: metrics differ ({len(a)} vs {len(b)} records, {steps} steps)")
print(f"world {sys.argv[3]}: {steps} steps, every logged value bitwise equal")
PY
done
