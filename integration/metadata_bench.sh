#!/usr/bin/env bash
# Metadata benchmark (issue 10): what 100 `mkdir`s, 100 `setfattr -n user.retention_bytes`
# and 100 `rmdir`s cost through the mount when the store has 10 topics and when it has
# 10,000, printed with the ratio of the two (each the median of 5 runs). The cost of a metadata change should not grow
# with the number of topics: a ratio near 1.
#
#   integration/metadata_bench.sh                 # needs root, /dev/fuse, fuse3, attr
#   TOPICS=2000 BIN=/path/to/other/commitfs integration/metadata_bench.sh
#
# The machine is shared and noisy: compare the ratios of one run, not absolute figures across
# runs. Every command that touches the mount runs under `timeout`, and the EXIT trap unmounts
# it however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

TOPICS=${TOPICS:-10000}   # the many topics
OPS=${OPS:-100}           # operations timed at each size
REPS=${REPS:-5}           # runs of each row at each size; the median is printed
LIMIT=${LIMIT:-600}       # seconds any one command may take

for tool in setfattr fusermount3; do
    command -v "$tool" >/dev/null || { echo "metadata_bench.sh needs $tool (apt-get install -y attr fuse3)" >&2; exit 1; }
done
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
    BIN=$PWD/target/release/commitfs
fi

WORK=$(mktemp -d /var/tmp/commitfs-metadata-bench.XXXXXX)
DATA=$WORK/data MNT=$WORK/mnt
mkdir -p "$DATA" "$MNT"
cleanup() {
    cd /
    if mountpoint -q "$MNT"; then timeout 60 umount "$MNT" || umount -l "$MNT"; fi
    # The daemon closes its store after umount returns: wait for it before removing it.
    for _ in $(seq 600); do pgrep -f -- "commitfs mount .*$DATA " >/dev/null || break; sleep 0.1; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

printf 'partitions = 1\n' >"$WORK/bench.toml"
timeout "$LIMIT" "$BIN" mount --config "$WORK/bench.toml" "$DATA" "$MNT"
cd "$MNT"

now() { date +%s.%N; }
# timed NAME COMMAND...: seconds the command took, after writeback of what came before.
timed() {
    sync
    local t0 t1
    t0=$(now)
    timeout "$LIMIT" bash -c "$1"
    t1=$(now)
    awk "BEGIN { printf \"%.3f\", $t1 - $t0 }"
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# The three rows at the current size, each the median of REPS runs: mkdir, setfattr and rmdir
# of OPS new topics named PREFIX-REP-N.
measure() { # PREFIX
    local rep names mkdirs="" setfattrs="" rmdirs=""
    for rep in $(seq "$REPS"); do
        names="seq -f '$1-$rep-%g' 1 $OPS"
        mkdirs+="$(timed "$names | xargs mkdir") "
        setfattrs+="$(timed "$names | xargs -n 1 setfattr -n user.retention_bytes -v 1048576") "
        rmdirs+="$(timed "$names | xargs rmdir") "
    done
    MKDIR=$(median <<<"$mkdirs")
    SETFATTR=$(median <<<"$setfattrs")
    RMDIR=$(median <<<"$rmdirs")
}

timeout "$LIMIT" bash -c "seq -f 'base-%g' 1 10 | xargs mkdir"
measure few
read -r FEW_MKDIR FEW_SETFATTR FEW_RMDIR <<<"$MKDIR $SETFATTR $RMDIR"
timeout "$LIMIT" bash -c "seq -f 'base-%g' 11 $TOPICS | xargs mkdir"
[ "$(ls | wc -l)" -eq "$TOPICS" ] || { echo "expected $TOPICS topics" >&2; exit 1; }
measure many
ratio() { awk "BEGIN { printf \"%.2f\", $2 / $1 }"; }

echo "| $OPS operations (median of $REPS) | at 10 topics (s) | at $TOPICS topics (s) | ratio |"
echo "|---|---|---|---|"
echo "| mkdir | $FEW_MKDIR | $MKDIR | $(ratio "$FEW_MKDIR" "$MKDIR") |"
echo "| setfattr user.retention_bytes | $FEW_SETFATTR | $SETFATTR | $(ratio "$FEW_SETFATTR" "$SETFATTR") |"
echo "| rmdir | $FEW_RMDIR | $RMDIR | $(ratio "$FEW_RMDIR" "$RMDIR") |"
