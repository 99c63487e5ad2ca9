#!/usr/bin/env bash
# A/B of two p2pd builds: the same 1 GiB random file (or, with --files N, a folder of N files of
# 4 KiB) sent on loopback by a pair of daemons of build A and a pair of build B, interleaved run by run (A B, B A, A B, ...), so that both see
# the same machine. Prints every run (wall time, CPU seconds of sender and receiver), best and
# median of each build, and B's throughput as a fraction of A's. Not a test: it fails only when
# something breaks (a daemon that does not start, wrong bytes received). See bench/README.md.
#
#   bench/ab.sh A_BIN_DIR B_BIN_DIR [--runs N] [--size SIZE | --files N]
#
# Used for the TLS target: A = a plaintext build (wire protocol 1, commit 6ad2690), B = this one.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/ab.sh A_BIN_DIR B_BIN_DIR [--runs N] [--size SIZE | --files N]

  A_BIN_DIR, B_BIN_DIR  directories holding p2pd and p2pctl of the two builds
  --runs N              runs per build (default 8; even, so each build goes first as often)
  --size SIZE           file size for bench-data (default 1G)
  --files N             send a folder of N files of 4 KiB instead of one large file (each
                        run into a fresh destination directory; earlier ones are moved
                        aside and deleted only when the script ends)

Temporary data goes under $BENCH_DIR (default /var/tmp), which must be a real disk.
Example (the plaintext baseline of the TLS target):
  git worktree add /tmp/plain 6ad2690 && (cd /tmp/plain && cargo build --release -p p2pd -p p2pctl)
  cargo build --release -p p2pd -p p2pctl -p p2p-tools
  bench/ab.sh /tmp/plain/target/release target/release
EOF
}

die() {
    echo "ab: $*" >&2
    exit 1
}

(($# >= 2)) || {
    usage >&2
    exit 2
}
declare -A BIN=([A]=$1 [B]=$2)
shift 2
RUNS=8
SIZE=1G
FILES=0
while (($#)); do
    case "$1" in
    --runs)
        shift
        RUNS=${1:-}
        [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs takes a positive number"
        ;;
    --size)
        shift
        SIZE=${1:-}
        [[ $SIZE =~ ^[1-9][0-9]*[KMG]?$ ]] || die "--size takes a size such as 256M or 1G"
        ;;
    --files)
        shift
        FILES=${1:-}
        [[ $FILES =~ ^[1-9][0-9]*$ ]] || die "--files takes a positive number"
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
    shift
done
for b in A B; do
    for tool in p2pd p2pctl; do
        [[ -x ${BIN[$b]}/$tool ]] || die "no $tool in ${BIN[$b]}"
    done
done
for tool in jq sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
(cd "$ROOT" && cargo build --release -q -p p2p-tools) || die "cannot build bench-data"
BENCH_DATA=${CARGO_TARGET_DIR:-$ROOT/target}/release/bench-data

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/p2pd-ab.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A SOCK ADDR PID
# Starts daemon NAME of build B (A or B); waits for its control socket.
start() {
    local b=$1 name=$2 dir=$WORK/$1-$2 extra=()
    mkdir -p "$dir/dl"
    # Builds with TLS sessions have --no-discovery and device trust; the plaintext one has
    # neither (and sends beacons, as it always did).
    grep -q -- --no-discovery <<<"$("${BIN[$b]}/p2pd" --help)" && extra=(--no-discovery)
    "${BIN[$b]}/p2pd" --socket "$dir/ctl.sock" --state-dir "$dir/state" --download-dir "$dir/dl" \
        --listen 127.0.0.1:0 --accept auto --log-level warn "${extra[@]}" 2>"$dir/p2pd.log" &
    local pid=$!
    PIDS+=("$pid")
    local i
    for i in $(seq 100); do
        "${BIN[$b]}/p2pctl" --socket "$dir/ctl.sock" status --json >"$dir/status.json" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || die "p2pd $b-$name exited: $(cat "$dir/p2pd.log")"
        sleep 0.1
    done
    SOCK[$b-$name]=$dir/ctl.sock
    ADDR[$b-$name]=$(jq -r .listen_address "$dir/status.json")
    PID[$b-$name]=$pid
    [[ ${ADDR[$b-$name]} != null ]] || die "p2pd $b-$name did not start"
}

ctl() { # BUILD NAME ARGS...
    local b=$1 n=$2
    shift 2
    "${BIN[$b]}/p2pctl" --socket "${SOCK[$b-$n]}" "$@"
}

# What goes over the wire: one file, or a folder; its digest is the SHA-256 of every file's
# digest in name order, so a folder is checked file by file.
digest() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1); }
if ((FILES)); then
    echo "ab: writing $FILES files of 4 KiB" >&2
    mkdir -p "$WORK/src"
    "$BENCH_DATA" files "$FILES" 4096 "$WORK/src/data.bin" >/dev/null
    WANT=$(digest "$WORK/src/data.bin")
    WHAT="$FILES x 4 KiB"
else
    echo "ab: writing $SIZE of random data" >&2
    mkdir -p "$WORK/src"
    "$BENCH_DATA" random "$SIZE" "$WORK/src/data.bin" >/dev/null
    WANT=$(sha256sum <"$WORK/src/data.bin" | cut -d' ' -f1)
    WHAT="$SIZE random"
fi
head -c 100 /dev/urandom >"$WORK/warm"
for b in A B; do
    start "$b" snd
    start "$b" rcv
    if grep -q ' trust ' <<<"$("${BIN[$b]}/p2pctl" --help)"; then
        ctl "$b" snd trust "$(jq -r .device_id "$WORK/$b-rcv/status.json")" >/dev/null
        ctl "$b" rcv trust "$(jq -r .device_id "$WORK/$b-snd/status.json")" >/dev/null
    fi
    # Opens the session, as a resident daemon would have it.
    ctl "$b" snd send "$WORK/warm" --peer "${ADDR[$b-rcv]}" --json >/dev/null || die "warm-up of $b failed"
done
find "$WORK/src" -type f -exec cat {} + >/dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
declare -A TIMES
for i in $(seq "$RUNS"); do
    order=(A B)
    ((i % 2)) || order=(B A)
    for b in "${order[@]}"; do
        # The last run's files are moved aside, not deleted: deleting 10,000 files slows the
        # next ones created on ext4 for a while; everything goes when the script ends.
        mkdir -p "$WORK/old"
        mv "$WORK/$b-rcv/dl" "$WORK/old/$b-$i"
        mkdir -p "$WORK/$b-rcv/dl"
        sync
        s0=$(cpu_ticks "${PID[$b-snd]}")
        r0=$(cpu_ticks "${PID[$b-rcv]}")
        t0=$(date +%s.%N)
        ctl "$b" snd send "$WORK/src/data.bin" --peer "${ADDR[$b-rcv]}" --json >/dev/null ||
            die "transfer of build $b failed: $(tail -5 "$WORK/$b-snd/p2pd.log")"
        t1=$(date +%s.%N)
        s1=$(cpu_ticks "${PID[$b-snd]}")
        r1=$(cpu_ticks "${PID[$b-rcv]}")
        if ((FILES)); then
            got=$(digest "$WORK/$b-rcv/dl/data.bin")
        else
            got=$(sha256sum <"$WORK/$b-rcv/dl/data.bin" | cut -d' ' -f1)
        fi
        [[ $got == "$WANT" ]] || die "build $b delivered wrong bytes"
        wall=$(echo "$t1 - $t0" | bc -l)
        TIMES[$b]+="$wall "
        printf 'ab: run %d build %s: %.3f s (cpu sender %.2f s, receiver %.2f s)\n' "$i" "$b" "$wall" \
            "$(echo "($s1 - $s0) / $TICK" | bc -l)" "$(echo "($r1 - $r0) / $TICK" | bc -l)" >&2
    done
done

stats() { # best median
    tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -n |
        awk '{a[NR] = $1} END {m = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.3f %.3f", a[1], m}'
}
read -r a_best a_med <<<"$(stats "${TIMES[A]}")"
read -r b_best b_med <<<"$(stats "${TIMES[B]}")"
echo "p2pd A/B — $(date -u +%FT%TZ), $(nproc) CPUs, $WHAT on loopback, $RUNS runs each, interleaved"
echo "A: ${BIN[A]}"
echo "B: ${BIN[B]}"
printf '%-8s %10s %10s\n' build "best s" "median s"
printf '%-8s %10s %10s\n' A "$a_best" "$a_med"
printf '%-8s %10s %10s\n' B "$b_best" "$b_med"
printf 'B throughput / A throughput: best %.3f, median %.3f\n' \
    "$(echo "$a_best / $b_best" | bc -l)" "$(echo "$a_med / $b_med" | bc -l)"
