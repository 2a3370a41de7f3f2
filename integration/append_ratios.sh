#!/usr/bin/env bash
# The append ratios of issue 7, measured the way an A/B comparison of builds needs them: one
# fresh mount per round, and in it one `cat` of the same keyed lines into three topics, after
# a warm-up write into each: a 1-partition topic without a key separator (unkeyed), the same
# with `:` as separator (keyed), and a topic of $PARTITIONS partitions with keys. The order of
# the three `cat`s rotates from round to round, and so does the order of the builds. Prints
# every round, then per build the medians and the two ratios of throughputs:
# keyed $PARTITIONS partitions / keyed 1 partition (goal ≥ 0.9) and keyed / unkeyed (≥ 0.8).
#
#   integration/append_ratios.sh                        # needs root, /dev/fuse, fuse3, attr
#   ROUNDS=8 BINS="/tmp/old/commitfs target/release/commitfs" integration/append_ratios.sh
#
# Single `cat`s vary twofold on this kind of machine (see the README's "Performance"): trust
# the medians of several rounds, and run nothing else meanwhile. Every command that touches the
# mount runs under `timeout`, and the EXIT trap unmounts it however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-6}
LINES=${LINES:-2000000} # 100-byte lines, keys kNNNNN: over 20,000 keys
PARTITIONS=${PARTITIONS:-10000}
LIMIT=${LIMIT:-300} # seconds any one command may take

for tool in getfattr setfattr; do
    command -v "$tool" >/dev/null || { echo "append_ratios.sh needs $tool (apt-get install -y attr fuse3)" >&2; exit 1; }
done
if [ -z "${BINS:-}" ]; then
    cargo build --release --quiet
    BINS=$PWD/target/release/commitfs
fi

WORK=$(mktemp -d /var/tmp/commitfs-ratios.XXXXXX)
DATA=$WORK/data MNT=$WORK/mnt
mkdir -p "$MNT"
unmount() {
    if mountpoint -q "$MNT"; then timeout 60 umount "$MNT" || umount -l "$MNT"; fi
    # The daemon closes its store after umount returns: wait for it before the data
    # directory is removed or made again.
    for _ in $(seq 600); do pgrep -f -- "mount --config $WORK/config.toml" >/dev/null || break; sleep 0.1; done
}
cleanup() {
    unmount
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

printf 'segment_messages = %s\npartitions = 1\n' "$LINES" >"$WORK/config.toml"
python3 - "$WORK/lines" "$LINES" <<'EOF'
import sys
path, count = sys.argv[1], int(sys.argv[2])
with open(path, "w") as out:
    for i in range(count):
        head = "k%05d:" % (i % 20000)
        out.write(head + "y" * (99 - len(head)) + "\n")
EOF
head -n 20000 "$WORK/lines" >"$WORK/warm-up"

seconds() { # FILE: one cat of the lines appended to FILE, in seconds
    local start end
    start=$(date +%s.%N)
    timeout "$LIMIT" cat "$WORK/lines" >>"$1"
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }'
}

one_round() { # BIN ROUND: prints "BIN unkeyed keyed keyed_many" (seconds)
    local bin=$1 round=$2 topic
    rm -rf "$DATA"
    mkdir -p "$DATA"
    timeout "$LIMIT" "$bin" mount --config "$WORK/config.toml" "$DATA" "$MNT"
    mkdir "$MNT/unkeyed" "$MNT/keyed" "$MNT/many"
    setfattr -n user.key_separator -v : "$MNT/keyed"
    setfattr -n user.key_separator -v : "$MNT/many"
    setfattr -n user.partitions -v "$PARTITIONS" "$MNT/many"
    for topic in unkeyed keyed many; do
        timeout "$LIMIT" cat "$WORK/warm-up" >>"$MNT/$topic/append"
    done
    cat "$WORK/lines" >/dev/null
    declare -A took
    local order=(unkeyed keyed many)
    for step in 0 1 2; do
        topic=${order[$(((step + round) % 3))]}
        took[$topic]=$(seconds "$MNT/$topic/append")
    done
    echo "$bin ${took[unkeyed]} ${took[keyed]} ${took[many]}"
    unmount
}

read -r -a bins <<<"$BINS"
echo "| round | build | unkeyed, 1 partition (s) | keyed, 1 partition (s) | keyed, $PARTITIONS partitions (s) |"
echo "|---|---|---|---|---|"
# Round 0 is not counted: the first writes of a machine into page-cache pages it never
# touched are several times slower (the README's "Performance"), whichever build meets them.
for round in $(seq 0 "$ROUNDS"); do
    for i in "${!bins[@]}"; do
        bin=${bins[$(((i + round) % ${#bins[@]}))]}
        result=$(one_round "$bin" "$round")
        read -r name unkeyed keyed many <<<"$result"
        if [ "$round" = 0 ]; then
            echo "| 0 (not counted) | $name | $unkeyed | $keyed | $many |"
        else
            echo "| $round | $name | $unkeyed | $keyed | $many |"
            echo "$name $unkeyed $keyed $many" >>"$WORK/results"
        fi
    done
done

echo
echo "| build (medians of $ROUNDS) | unkeyed (s) | keyed (s) | keyed, $PARTITIONS partitions (s) | keyed $PARTITIONS / 1 partition | keyed / unkeyed |"
echo "|---|---|---|---|---|---|"
for bin in "${bins[@]}"; do
    python3 - "$WORK/results" "$bin" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.split()[0] == sys.argv[2]]
unkeyed, keyed, many = (statistics.median(float(row[i]) for row in rows) for i in (1, 2, 3))
# Throughput ratios: the same lines in each cat, so the inverse ratio of the times.
print(f"| {sys.argv[2]} | {unkeyed:.3f} | {keyed:.3f} | {many:.3f} | {keyed / many:.2f} | {unkeyed / keyed:.2f} |")
EOF
done
