#!/usr/bin/env bash
# Runs every ```sh block of README.md, in order, in one shell, in a fresh copy of this
# repository's files (those git tracks, and new ones it does not ignore: what a clone of the
# next commit holds): what a new reader types, top to bottom. Fails on the first command that
# fails, naming its block.
#
# A comment line just before a block says how to run it, where a shell script cannot do as a
# person would:
#   <!-- readme-check: background, ready when PATH is mounted -->
#       runs in the background (a person's first terminal) until the end or until a block marked
#       "after stopping the background commands"; the next block waits until PATH is mounted.
#   <!-- readme-check: after stopping the background commands -->
#       first stops the background blocks as Ctrl-C would (SIGINT to their process group).
#   <!-- readme-check: skip, REASON -->
#       listed with its reason, not run.
#
# Needs root, /dev/fuse, and the README's mountpoints and ports free. Builds share this
# repository's target/ (linked into the clone), so a built tree checks in minutes.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
readme_mounts=(/mnt/rustre /mnt/second /mnt/a /mnt/b)
for mountpoint in "${readme_mounts[@]}"; do
    if mountpoint -q "$mountpoint" 2>/dev/null; then
        echo "readme-check: $mountpoint is mounted already; the README uses it" >&2
        exit 1
    fi
done

work=$(mktemp -d /tmp/rustre-readme.XXXXXX)
cleanup() {
    # Whatever a failed run left: mounts first, then processes, then the clone.
    for mountpoint in "${readme_mounts[@]}"; do
        if mountpoint -q "$mountpoint" 2>/dev/null; then
            umount -l "$mountpoint" || true
        fi
    done
    if [ -f "$work/groups" ]; then
        while read -r group; do
            kill -TERM -- "-$group" 2>/dev/null || true
        done < "$work/groups"
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
mkdir "$work/clone"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -C "$work/clone" -xf -
mkdir -p "$root/target"
ln -s "$root/target" "$work/clone/target"
script="$work/readme.sh"

# The README's blocks as one script: foreground blocks inline (aliases and exports carry on),
# background blocks as files of their own run in a process group each.
awk -v work="$work" '
    function quote(text) { gsub(/\047/, "\047\\\047\047", text); return "\047" text "\047" }
    /^<!-- readme-check: / { directive = $0; sub(/^<!-- readme-check: /, "", directive); sub(/ -->$/, "", directive); next }
    /^```sh$/ { inside = 1; block++; body = ""; first = ""; next }
    inside && /^```$/ {
        inside = 0
        label = "README block " block ": " first
        if (directive ~ /^skip/) {
            printf "echo %s\n", quote("== " label " (not run: " substr(directive, 7) ")")
        } else if (directive ~ /^background/) {
            file = work "/block" block ".sh"
            printf "cat > %s <<\047RUSTRE_README_BLOCK\047\n%sRUSTRE_README_BLOCK\n", quote(file), body
            printf "echo %s\n", quote("== " label " (in the background)")
            printf "run_background %s %s\n", quote(file), quote(work "/block" block ".log")
            ready = directive; sub(/.*ready when /, "", ready); sub(/ is mounted.*/, "", ready)
            printf "wait_mounted %s\n", quote(ready)
        } else {
            if (directive ~ /^after stopping/) printf "stop_background\n"
            printf "echo %s\n", quote("== " label)
            printf "current=%s\n", quote(label)
            printf "%s", body
        }
        directive = ""
        next
    }
    inside { if (first == "") first = $0; body = body $0 "\n" }
' "$root/README.md" > "$script.body"

blocks=$(grep -c '^```sh$' "$root/README.md")
cat > "$script" <<'PRELUDE'
set -Eeuo pipefail
shopt -s expand_aliases
# This script's process group, and each background block's, for the cleanup of a failed run.
echo "$$" > "$READMECHECK_WORK/groups"
background=()
logs=()
current="(none)"

# How long the first build and mount may take, on CI's 2 cores.
READY_WAIT_SECONDS=1800

run_background() {
    setsid bash "$1" > "$2" 2>&1 &
    background+=("$!")
    echo "$!" >> "$READMECHECK_WORK/groups"
    logs+=("$2")
}

wait_mounted() {
    local waited=0
    until mountpoint -q "$1"; do
        for pid in "${background[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                echo "readme-check: a background block ended before $1 was mounted:" >&2
                tail -n 30 "${logs[@]}" >&2
                exit 1
            fi
        done
        sleep 1
        waited=$((waited + 1))
        if [ "$waited" -ge "$READY_WAIT_SECONDS" ]; then
            echo "readme-check: $1 not mounted after $READY_WAIT_SECONDS s" >&2
            exit 1
        fi
    done
}

# Ctrl-C to each background block (its whole process group), then wait for it to end.
stop_background() {
    for pid in "${background[@]}"; do
        kill -INT -- "-$pid" 2>/dev/null || true
    done
    for pid in "${background[@]}"; do
        for _ in $(seq 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "readme-check: a background block did not stop on SIGINT" >&2
            exit 1
        fi
    done
    background=()
}

report_failure() {
    echo "readme-check: FAILED in $current" >&2
    for log in "${logs[@]}"; do
        echo "--- last lines of $log" >&2
        tail -n 20 "$log" >&2 || true
    done
}
trap report_failure ERR
PRELUDE
cat "$script.body" >> "$script"
echo 'stop_background' >> "$script"


echo "readme-check: $blocks blocks of README.md, in $work/clone"
status=0
# In the background and waited for, so that a TERM (CI's timeout) interrupts the wait and the
# cleanup runs; the script runs in a session of its own, whose group the cleanup kills.
(cd "$work/clone" && READMECHECK_WORK="$work" exec setsid --wait bash "$script") &
wait "$!" || status=$?
if [ "$status" -ne 0 ]; then
    echo "readme-check: failed (exit $status)" >&2
    exit "$status"
fi
echo "readme-check: every block ran"
