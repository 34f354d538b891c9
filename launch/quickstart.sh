#!/usr/bin/env bash
# The README's first command, on a fresh Debian 12 machine: install dependencies, build,
# train configs/quickstart.yaml on 2 ranks with expert parallelism 2, and say where the
# results are. Extra arguments go to `condensa train`:
#   launch/quickstart.sh --set train.steps=50
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

case "${1:-}" in
  -h|--help)
    sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    echo "Environment: JOBS (build parallelism, default nproc), CONDENSA_BUILD_DIR, CONDENSA_BIN."
    exit 0
    ;;
esac

run_dir="runs/quickstart"
export JOBS="${JOBS:-$(nproc)}"

echo "== quickstart 1/3: dependencies (launch/setup.sh)"
launch/setup.sh

echo "== quickstart 2/3: build (launch/build.sh --target condensa, JOBS=$JOBS)"
launch/build.sh --target condensa
export CONDENSA_BIN="${CONDENSA_BIN:-${CONDENSA_BUILD_DIR:-$root/build}/condensa}"

echo "== quickstart 3/3: train configs/quickstart.yaml on 2 ranks, expert_parallel=2"
mkdir -p "$run_dir"
log="$run_dir/train.log"
status=0
launch/train.sh -n 2 -- configs/quickstart.yaml --set parallel.expert_parallel=2 "$@" 2>&1 |
  tee "$log" || status=$?
if (( status != 0 )); then
  echo "quickstart: training failed (exit $status); full log: $root/$log" >&2
  exit "$status"
fi

bin_rel="${CONDENSA_BIN#"$root"/}"
"$CONDENSA_BIN" report "$run_dir" >/dev/null
cat <<EOF

quickstart: done.
  report      $run_dir/report.html  (open in a browser: curves, expert load heatmaps, config)
  checkpoint  $run_dir/checkpoints/latest  (names the newest step directory)
  metrics     $run_dir/metrics.jsonl  (one JSON object per logged step)
  tensorboard .deps/pyenv/bin/tensorboard --logdir $run_dir/tb
  log         $log

Try the model (greedy decoding):
  $bin_rel generate --checkpoint $run_dir --prompt "12+34=" --temperature 0
Score it on text or token shards:
  $bin_rel eval --checkpoint $run_dir --data FILE_OR_SHARD_DIR
Launching on more ranks or machines, stopping and resuming: docs/launch.md
Rebuild the report of a running or finished run: $bin_rel report $run_dir (docs/observe.md)
EOF
