#!/usr/bin/env bash
# Mount benchmark: the same shell commands on the native file system, on bindfs (a plain FUSE
# passthrough: what any FUSE file system pays) and on commitfs, in one run, printed as one
# Markdown table with each figure's ratio to native. Every figure is the median of $REPS runs.
#
#   integration/bench.sh            # needs root, /dev/fuse, fuse3, attr, bindfs
#   REPS=5 LINES=2000000 integration/bench.sh
#
# The machine is shared and noisy: compare the ratios of one run, not absolute figures across
# runs.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
LINES=${LINES:-2000000}      # 100-byte lines for the append and read rows
ECHOES=${ECHOES:-20000}      # iterations of the echo loop
LOOKUPS=${LOOKUPS:-2000}     # getfattr / stat process calls

for tool in bindfs getfattr fusermount3; do
    command -v "$tool" >/dev/null || { echo "bench.sh needs $tool (apt-get install -y bindfs attr fuse3)" >&2; exit 1; }
done
cargo build --release --quiet
BIN=$PWD/target/release/commitfs

WORK=$(mktemp -d /var/tmp/commitfs-bench.XXXXXX)
NATIVE=$WORK/native BSRC=$WORK/bindfs-src BMNT=$WORK/bindfs CDATA=$WORK/cfs-data CMNT=$WORK/cfs
mkdir -p "$NATIVE" "$BSRC" "$BMNT" "$CDATA" "$CMNT"
cleanup() {
    mountpoint -q "$CMNT" && umount "$CMNT"
    mountpoint -q "$BMNT" && fusermount3 -u "$BMNT"
    rm -rf "$WORK"
}
trap cleanup EXIT

# One segment holds every line, plus one more line to seal it: the read rows read a sealed
# segment of LINES x 100 bytes.
cat >"$WORK/bench.toml" <<EOF
segment_messages = $LINES
partitions = 1
EOF

python3 - "$WORK/lines" "$LINES" <<'EOF'
import sys
path, count = sys.argv[1], int(sys.argv[2])
with open(path, "w") as out:
    for i in range(count):
        out.write(("key-%08d " % i).ljust(99, "x") + "\n")
EOF
LINE=$(head -n 1 "$WORK/lines")
cat "$WORK/lines" >/dev/null   # the input comes from the page cache in every run

now() { date +%s.%N; }
calc() { awk "BEGIN { print $1 }"; }
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

mount_all() {
    bindfs "$BSRC" "$BMNT"
    "$BIN" mount --config "$WORK/bench.toml" "$CDATA" "$CMNT"
    mkdir "$CMNT/bench"
}
unmount_all() {
    umount "$CMNT"
    fusermount3 -u "$BMNT"
    rm -rf "${CDATA:?}"/* "${BSRC:?}"/* "${NATIVE:?}"/*
}

# target FILE for each column: where appends go, and the file the read rows read.
append_file() {
    case $1 in
        native) echo "$NATIVE/log" ;;
        bindfs) echo "$BMNT/log" ;;
        commitfs) echo "$CMNT/bench/0/active" ;;
    esac
}
read_file() {
    case $1 in
        commitfs) echo "$CMNT/bench/0/00000000000000000000.log" ;;
        *) append_file "$1" ;;
    esac
}

declare -A RESULT
record() { RESULT[$1,$2]+="$3 "; }

for rep in $(seq "$REPS"); do
    mount_all
    for fs in native bindfs commitfs; do
        f=$(append_file "$fs")
        t0=$(now); cat "$WORK/lines" >>"$f"; t1=$(now)
        record cat "$fs" "$(calc "$t1 - $t0")"
        echo "$LINE" >>"$f"   # seals commitfs's segment; the same line everywhere
    done
    drop_caches
    for fs in native bindfs commitfs; do
        f=$(read_file "$fs")
        t0=$(now); dd if="$f" of=/dev/null bs=1M status=none; t1=$(now)
        record read1 "$fs" "$(calc "$t1 - $t0")"
        t0=$(now); dd if="$f" of=/dev/null bs=1M status=none; t1=$(now)
        record read2 "$fs" "$(calc "$t1 - $t0")"
    done
    for fs in native bindfs commitfs; do
        f=$(append_file "$fs")
        t0=$(now)
        i=0; while [ $i -lt "$ECHOES" ]; do echo "$LINE" >>"$f"; i=$((i + 1)); done
        t1=$(now)
        record echo "$fs" "$(calc "$t1 - $t0")"
    done
    # Key lookups through the index against stat, process call for process call.
    setfattr -n user.key_separator -v ' ' "$CMNT/bench"
    for i in $(seq 0 999); do printf 'k%04d %s\n' "$i" "$LINE"; done >>"$CMNT/bench/0/active"
    t0=$(now)
    for i in $(seq "$LOOKUPS"); do
        printf -v key 'k%04d' $((i % 1000))
        getfattr --absolute-names -n "user.key.$key" --only-values "$CMNT/bench/0" >/dev/null
    done
    t1=$(now)
    record getfattr commitfs "$(calc "$t1 - $t0")"
    t0=$(now)
    for i in $(seq "$LOOKUPS"); do stat "$CMNT/bench/0" >/dev/null; done
    t1=$(now)
    record stat commitfs "$(calc "$t1 - $t0")"
    unmount_all
done

med() { echo "${RESULT[$1,$2]}" | tr ' ' '\n' | grep . | median; }
bytes=$((LINES * 100))
rate() { calc "($1) / ($2)"; }
fmt() { printf '%.2f' "$1"; }

echo
echo "| command (median of $REPS) | native | bindfs | commitfs | commitfs / native | bindfs / native |"
echo "|---|---|---|---|---|---|"
row() { # name unit scale metric-per-second-of
    local name=$1 key=$2 amount=$3 unit=$4
    local n b c
    n=$(rate "$amount" "$(med "$key" native)")
    b=$(rate "$amount" "$(med "$key" bindfs)")
    c=$(rate "$amount" "$(med "$key" commitfs)")
    echo "| $name | $(fmt "$n") $unit | $(fmt "$b") $unit | $(fmt "$c") $unit | $(fmt "$(rate "$c" "$n")") | $(fmt "$(rate "$b" "$n")") |"
}
row "cat $LINES lines of 100 B >> file (M messages/s)" cat "$LINES / 1000000" "M/s"
row "same, MB/s" cat "$bytes / 1000000" "MB/s"
row "$ECHOES × echo >> file in a shell loop (k lines/s)" echo "$ECHOES / 1000" "k/s"
row "dd bs=1M of the $((bytes / 1000000)) MB segment, first read after drop_caches (GB/s)" read1 "$bytes / 1000000000" "GB/s"
row "dd bs=1M of the same, second read (GB/s)" read2 "$bytes / 1000000000" "GB/s"
g=$(rate "$LOOKUPS" "$(med getfattr commitfs)")
s=$(rate "$LOOKUPS" "$(med stat commitfs)")
echo
echo "| process calls on commitfs (median of $REPS) | calls/s |"
echo "|---|---|"
echo "| getfattr -n user.key.K --only-values PARTITION_DIR | $(fmt "$g") |"
echo "| stat PARTITION_DIR | $(fmt "$s") |"
echo "| getfattr / stat | $(fmt "$(rate "$g" "$s")") |"
