#!/usr/bin/env bash
# Launches `condensa train` on one or more ranks through Open MPI's mpirun.
#
# The one design choice: every rank gets one thread budget, T intra-op threads, passed both as
# OMP_NUM_THREADS (OpenMP/BLAS) and as `--set run.threads=T` (LibTorch), and with
# `--bind core` each rank is pinned to T cores of its own, so ranks on a node never
# compete for the same cores. With one rank the binary runs directly, without mpirun.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prog="launch/train.sh"

usage() {
  cat <<'EOF'
usage: launch/train.sh [-n RANKS] [--hostfile FILE] [--ranks-per-node N]
                       [--threads-per-rank T] [--bind core|socket|none] [--dry-run]
                       -- CONFIG.yaml [--set section.key=value ...]

Runs `condensa train CONFIG.yaml [--set ...]` on RANKS processes. Everything after `--`
goes to condensa unchanged (see `build/condensa train --help`).

options:
  -n, --np RANKS            number of ranks = pipeline_parallel x data_parallel
                            (default: $NP, else 1). With 1 the binary runs without mpirun.
  --hostfile FILE           Open MPI hostfile for several machines (default: $HOSTFILE)
  --ranks-per-node N        place N ranks on each node (mpirun --map-by ppr:N:node)
  --threads-per-rank T      intra-op threads per rank: sets OMP_NUM_THREADS=T and
                            run.threads=T (default: nproc / ranks on this node, at least 1)
  --bind core|socket|none   pin each rank to T cores of its own (core, the default), to a
                            socket, or not at all. Falls back to none, with a warning, when
                            the node has fewer cores than ranks x threads.
  --dry-run                 print the command instead of running it (the binary need not exist)
  -h, --help                this text

environment:
  NP, HOSTFILE              defaults for -n and --hostfile
  CONDENSA_BIN              the binary (default: <repo>/build/condensa)
  MPIRUN                    the mpirun to use (default: mpirun on PATH)
  CONDENSA_MPIRUN_ARGS      extra mpirun arguments, split on spaces
                            (e.g. "--mca btl_tcp_if_include eth0")

"Ranks on this node" is --ranks-per-node when given; with a hostfile whose lines all carry
slots=, the most ranks Open MPI's by-slot placement puts on one host; with a hostfile
without slots=, RANKS divided by its hosts, rounded up; otherwise RANKS. Nodes are assumed
alike: the thread budget computed here is sent to every rank.

The binary picks its GPU itself (NCCL backend): device = rank within the node modulo the
visible devices; CUDA_VISIBLE_DEVICES need not be set.

examples:
  launch/train.sh -n 2 -- configs/quickstart.yaml --set parallel.expert_parallel=2
  launch/train.sh -n 16 --hostfile hosts --ranks-per-node 8 -- configs/tiny.yaml
EOF
}

die() {  # die EXIT_CODE MESSAGE...
  local code="$1"
  shift
  echo "$prog: $*" >&2
  exit "$code"
}
warn() { echo "$prog: warning: $*" >&2; }

positive_int() {  # positive_int FLAG VALUE
  [[ "$2" =~ ^[0-9]+$ ]] && (( 10#$2 >= 1 )) ||
    die 2 "$1 expects a positive integer, got '$2'"
}

# ---- parse ----
np="${NP:-}"
hostfile="${HOSTFILE:-}"
ranks_per_node=""
threads=""
bind=""
dry_run=0
train_args=()
np_from="NP"
hostfile_from="HOSTFILE"

while (( $# > 0 )); do
  arg="$1"
  case "$arg" in
    --) shift; train_args=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift; continue ;;
  esac
  # Value flags, as `--flag VALUE` or `--flag=VALUE`.
  flag="$arg"
  value=""
  if [[ "$arg" == --*=* ]]; then
    flag="${arg%%=*}"
    value="${arg#*=}"
    shift
  else
    case "$arg" in
      -n|--np|--hostfile|--ranks-per-node|--threads-per-rank|--bind)
        (( $# >= 2 )) && [[ "$2" != --* ]] || die 2 "$arg needs a value (see --help)"
        value="$2"
        shift 2
        ;;
      -*) die 2 "unknown option '$arg' (see --help)" ;;
      *) die 2 "unexpected argument '$arg': put CONFIG.yaml and condensa's arguments after '--'" \
           "(launch/train.sh [options] -- CONFIG.yaml [--set ...])" ;;
    esac
  fi
  case "$flag" in
    -n|--np) np="$value"; np_from="$flag" ;;
    --hostfile) hostfile="$value"; hostfile_from="$flag" ;;
    --ranks-per-node) ranks_per_node="$value" ;;
    --threads-per-rank) threads="$value" ;;
    --bind) bind="$value" ;;
    *) die 2 "unknown option '$flag' (see --help)" ;;
  esac
done

np="${np:-1}"
positive_int "$np_from" "$np"
np=$((10#$np))
[[ -z "$ranks_per_node" ]] || { positive_int --ranks-per-node "$ranks_per_node"; ranks_per_node=$((10#$ranks_per_node)); }
[[ -z "$threads" ]] || { positive_int --threads-per-rank "$threads"; threads=$((10#$threads)); }
case "${bind:-core}" in
  core|socket|none) ;;
  *) die 2 "--bind expects core, socket or none, got '$bind'" ;;
esac
if [[ -n "$hostfile" && ! -r "$hostfile" ]]; then
  die 2 "$hostfile_from: cannot read hostfile '$hostfile'"
fi

(( ${#train_args[@]} > 0 )) ||
  die 2 "missing CONFIG.yaml after '--' (launch/train.sh [options] -- CONFIG.yaml [--set ...])"
config="${train_args[0]}"
if [[ "$config" != -* && ! -f "$config" ]]; then
  die 2 "config file '$config' not found (working directory: $PWD)"
fi

# ---- machine ----
# CPUs this process may run on (nproc would otherwise honour an inherited OMP_NUM_THREADS).
num_cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"
# Physical cores we may run on: Open MPI counts slots and binds by core, not hardware thread.
num_cores="$(
  allowed="$(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status 2>/dev/null || true)"
  lscpu -p=cpu,core,socket 2>/dev/null | awk -F, -v allowed="$allowed" '
    BEGIN { n = split(allowed, parts, ","); for (i = 1; i <= n; i++) {
              m = split(parts[i], r, "-"); lo = r[1]; hi = (m > 1 ? r[2] : r[1])
              for (c = lo; c <= hi; c++) ok[c] = 1 } }
    /^#/ { next }
    (allowed == "" || ($1 in ok)) && !(($3 "," $2) in seen) { seen[$3 "," $2] = 1; count++ }
    END { print count + 0 }' || true
)"
if ! [[ "$num_cores" =~ ^[0-9]+$ ]] || (( num_cores < 1 || num_cores > num_cpus )); then
  num_cores="$num_cpus"
fi

# Ranks Open MPI will start on the busiest host (see --help).
local_ranks() {
  if [[ -n "$ranks_per_node" ]]; then
    echo $(( ranks_per_node < np ? ranks_per_node : np ))
  elif [[ -n "$hostfile" ]]; then
    awk -v np="$np" '
      { sub(/#.*/, "") } NF == 0 { next }
      { host = $1; s = ""; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) s = substr($i, 7)
        if (!(host in slots)) order[++n] = host
        if (s == "") missing = 1; else slots[host] += s; seen[host] = 1 }
      END {
        if (n == 0) { print np; exit }
        if (missing) { print int((np + n - 1) / n); exit }
        left = np; most = 0
        for (i = 1; i <= n && left > 0; i++) {
          take = (slots[order[i]] < left ? slots[order[i]] : left); left -= take
          if (take > most) most = take }
        if (left > 0) most = int((np + n - 1) / n)  # oversubscribed: mpirun decides
        print (most > 0 ? most : 1) }' "$hostfile"
  else
    echo "$np"
  fi
}
ranks_here="$(local_ranks)"
if [[ -z "$threads" ]]; then
  threads=$(( num_cpus / ranks_here ))
  (( threads >= 1 )) || threads=1
fi

# ---- binary ----
bin="${CONDENSA_BIN:-$root/build/condensa}"
if [[ ! -x "$bin" ]]; then
  if (( dry_run )); then
    warn "$bin is not built yet (run launch/build.sh --target condensa)"
  else
    die 2 "$bin not found or not executable: build it with launch/build.sh --target condensa" \
      "(or point CONDENSA_BIN at a binary)"
  fi
fi
condensa=("$bin" train "${train_args[0]}" --set "run.threads=$threads" "${train_args[@]:1}")

run() {
  if (( dry_run )); then
    printf '%q ' "$@" | sed 's/ $//'
    echo
    exit 0
  fi
  exec "$@"
}

# ---- one rank: no mpirun ----
if (( np == 1 )); then
  [[ -z "$hostfile" ]] || warn "--hostfile has no effect with one rank; ignored"
  [[ -z "$ranks_per_node" ]] || warn "--ranks-per-node has no effect with one rank; ignored"
  [[ -z "$bind" ]] || warn "--bind has no effect with one rank (no mpirun); ignored"
  run env "OMP_NUM_THREADS=$threads" "${condensa[@]}"
fi

# ---- several ranks: mpirun ----
mpirun_bin="${MPIRUN:-mpirun}"
if ! command -v "$mpirun_bin" >/dev/null 2>&1 && (( ! dry_run )); then
  die 2 "'$mpirun_bin' not found: install Open MPI (launch/setup.sh) or set MPIRUN"
fi

cmd=("$mpirun_bin" -np "$np")
[[ "$(id -u)" -ne 0 ]] || cmd+=(--allow-run-as-root)
[[ -z "$hostfile" ]] || cmd+=(--hostfile "$hostfile")

# One host, no hostfile, no Slurm allocation: Open MPI offers one slot per core.
oversubscribe=0
if [[ -z "$hostfile" && -z "${SLURM_JOB_ID:-}" ]] && (( ranks_here > num_cores )); then
  oversubscribe=1
  cmd+=(--oversubscribe)
fi

bind="${bind:-core}"
map="slot"
[[ -z "$ranks_per_node" ]] || map="ppr:$ranks_per_node:node"
if [[ "$bind" == core ]]; then
  cores_per_rank=$(( num_cores / ranks_here ))
  (( cores_per_rank <= threads )) || cores_per_rank="$threads"
  if (( oversubscribe || cores_per_rank < 1 )); then
    warn "$ranks_here ranks per node but $num_cores cores on this machine: cannot give each rank" \
      "a core of its own; using --bind none"
    bind="none"
  else
    map="$map:PE=$cores_per_rank"
  fi
fi
cmd+=(--map-by "$map" --bind-to "$bind")

cmd+=(-x "OMP_NUM_THREADS=$threads" -x PATH)
[[ -z "${LD_LIBRARY_PATH:-}" ]] || cmd+=(-x LD_LIBRARY_PATH)
if [[ -n "${CONDENSA_MPIRUN_ARGS:-}" ]]; then
  read -r -a extra <<<"$CONDENSA_MPIRUN_ARGS"
  cmd+=("${extra[@]}")
fi

run "${cmd[@]}" "${condensa[@]}"
