#!/usr/bin/env bash
# One run of the tmpfs-against-disk comparison in docs/BENCHMARKS.md (2026-12-07):
# a fresh server and store on tmpfs or on disk, the library bench through 2 sessions x 2 threads,
# then the server stopped and the store removed. The runs alternated:
#   for r in 1 2 3; do run.sh tmpfs $r; run.sh disk $r; done
# and the stat-changed run was: PHASES=create,stat-changed LABEL=stat-changed-tmpfs-1 run.sh tmpfs 1
# (its report is kept as stat-changed-2-sessions.json).
# RUSTRE: the binary (the runs used a copy of target/release/rustre, so that a rebuild by other work
# on the same machine could not swap it mid-run).
set -euo pipefail
kind=$1 round=$2
port=${PORT:-7301}
bin=${RUSTRE:-target/release/rustre}
phases=${PHASES:-create,stat,open,rename,unlink}
label=${LABEL:-$kind-$round}
case $kind in
    tmpfs) data=/dev/shm/rustre-bench-$round ;;  # tmpfs
    disk) data=/var/tmp/rustre-bench-$round ;;   # ext4 on /dev/vda, like the default ./rustre-data
    *) echo "tmpfs or disk" >&2; exit 2 ;;
esac
rm -rf "$data"
"$bin" server --data "$data" --listen 127.0.0.1:$port --root-squash off 2>"$label.server.log" &
server=$!
for _ in $(seq 100); do [ -s "$data/secret" ] && (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
export RUSTRE_SECRET_FILE=$data/secret
"$bin" --server 127.0.0.1:$port mkdir /bench
uptime
"$bin" --server 127.0.0.1:$port bench --dir /bench -n 2000 -t 2 --clients 2 --phases "$phases" \
    --label "$label" --json >"$label.json"
uptime
kill $server
wait $server || true
rm -rf "$data"
