#!/usr/bin/env bash
# Measures rustre side by side with its references in one run, on this machine:
#   rustre through the library, rustre through a FUSE mount, tmpfs, and a FUSE passthrough
#   (bindfs over tmpfs), all with the same `rustre bench` options; then the durable create rate
#   through the library as the number of clients grows (server store on disk).
# Writes the reports (JSON), a Markdown table and SVG charts into OUT (default docs/bench).
# Needs root, /dev/fuse and bindfs (installed with apt-get if missing).
#
#   scripts/bench-compare.sh [OUT] [-- extra rustre bench options]
# Environment: FILES (per thread, default 10000), THREADS (default 2), ENTRIES (listing, default
# 100000), IO_SIZE (default 256M), CURVE ("1 2 4 8 16 32"), CURVE_FILES (default 2000).
set -euo pipefail

out=${1:-docs/bench}
shift || true
[[ ${1:-} == -- ]] && shift
extra=("$@")
files=${FILES:-10000}
threads=${THREADS:-2}
entries=${ENTRIES:-100000}
io_size=${IO_SIZE:-256M}
curve=${CURVE:-1 2 4 8 16 32}
curve_files=${CURVE_FILES:-2000}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --locked -p rustre-cli
rustre=$root/target/release/rustre
command -v bindfs >/dev/null || apt-get install -y bindfs >/dev/null
mkdir -p "$out"

work=$(mktemp -d /tmp/rustre-bench.XXXXXX)
pids=()
cleanup() {
    for mountpoint in "$work/mnt" "$work/bindfs" "$work/tmpfs"; do
        mountpoint -q "$mountpoint" 2>/dev/null && umount -l "$mountpoint"
    done
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/tmpfs" "$work/bindfs" "$work/mnt" "$work/disk"
mount -t tmpfs -o size=8g rustre-bench "$work/tmpfs"
mkdir -p "$work/tmpfs/plain" "$work/tmpfs/under-bindfs" "$work/tmpfs/store"
bindfs "$work/tmpfs/under-bindfs" "$work/bindfs"

port=$((20000 + RANDOM % 20000))
address=127.0.0.1:$port
# Root squash off: the benchmark runs as root and must write where root may. Clients prove the
# secret the first server makes; the second server (below) is given the same one.
"$rustre" server --data "$work/tmpfs/store" --listen "$address" --root-squash off 2>"$work/server.log" &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
export RUSTRE_SECRET_FILE=$work/tmpfs/store/secret
"$rustre" mount "$address" "$work/mnt" >"$work/mount.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
mountpoint -q "$work/mnt" || { echo "the mount did not come up" >&2; cat "$work/mount.log" >&2; exit 1; }

options=(--threads "$threads" --files "$files" --readdir-entries "$entries" --io-size "$io_size" "${extra[@]}")
echo "rustre bench ${options[*]}" >"$out/command.txt"
run() { # label, then where
    local label=$1
    shift
    echo "== $label" >&2
    "$rustre" bench "$@" "${options[@]}" --label "$label" --json >"$out/$label.json"
}
run rustre-library --server "$address"
run rustre-mount "$work/mnt"
run tmpfs "$work/tmpfs/plain"
run bindfs "$work/bindfs"
"$rustre" bench-compare "$out"/{rustre-library,rustre-mount,tmpfs,bindfs}.json \
    --svg "$out/comparison.svg" --title "rustre bench, $threads threads: rustre (library, mount) vs tmpfs and bindfs over tmpfs" \
    >"$out/comparison.md"

# Durable creates through the library as clients grow: the server's store on disk (fsync).
kill "${pids[@]}" 2>/dev/null || true
wait 2>/dev/null || true
pids=()
mountpoint -q "$work/mnt" && umount -l "$work/mnt"
port=$((port + 1))
address=127.0.0.1:$port
"$rustre" server --data "$work/disk/store" --listen "$address" --root-squash off \
    --secret-file "$RUSTRE_SECRET_FILE" 2>"$work/server-disk.log" &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
curve_reports=()
for clients in $curve; do
    echo "== creates, $clients clients" >&2
    "$rustre" bench --server "$address" --clients "$clients" --threads "$clients" --files "$curve_files" \
        --phases create,unlink --label "$clients clients" --json >"$out/creates-$clients.json"
    curve_reports+=("$out/creates-$clients.json")
done
"$rustre" bench-compare "${curve_reports[@]}" --svg "$out/creates-by-clients.svg" \
    --title "durable creates and unlinks through the library, store on disk, by clients" >"$out/creates-by-clients.md"
cat "$out/comparison.md" "$out/creates-by-clients.md"
