#!/usr/bin/env bash
# Mount benchmark: the same shell commands on the native file system, on bindfs (a plain FUSE
# passthrough: what any FUSE file system pays) and on commitfs, in one run, printed as
# Markdown tables with each figure's ratio to native. Every figure is the median of $REPS runs.
#
#   integration/bench.sh            # needs root, /dev/fuse, fuse3, attr, bindfs
#   REPS=5 LINES=2000000 integration/bench.sh
#
# Rows: one `cat` into a partition; keyed lines through a topic's `append` into 1 and into
# 10,000 partitions, and unkeyed lines through `append` (native and bindfs: the same `cat`
# appended to a plain file); an `echo` loop; reads of a sealed segment that is a file of its
# own (passthrough, and with passthrough off); the `cat` into a partition whose segments seal
# during it, with materialize_segments on and off; key lookups; and the data directory's size
# per byte of message.
#
# The machine is shared and noisy: compare the ratios of one run, not absolute figures across
# runs. Each rep runs the file systems in a different order (and materialize_segments on and off),
# so that none always goes first. Every command that touches a mount runs under `timeout`, and the EXIT trap unmounts
# whatever is still mounted however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
LINES=${LINES:-2000000}      # 100-byte lines for the append and read rows
ECHOES=${ECHOES:-20000}      # iterations of the echo loop
LOOKUPS=${LOOKUPS:-2000}     # getfattr / stat process calls
WARM_READS=${WARM_READS:-10} # reads timed together for the second-read rows
KEYS=20000                   # distinct keys of the keyed lines (kNNNNN:)
MANY_PARTITIONS=10000
LIMIT=${LIMIT:-600}          # seconds any one command may take

for tool in bindfs getfattr setfattr fusermount3; do
    command -v "$tool" >/dev/null || { echo "bench.sh needs $tool (apt-get install -y bindfs attr fuse3)" >&2; exit 1; }
done
cargo build --release --quiet
BIN=$PWD/target/release/commitfs

WORK=$(mktemp -d /var/tmp/commitfs-bench.XXXXXX)
NATIVE=$WORK/native BSRC=$WORK/bindfs-src BMNT=$WORK/bindfs CDATA=$WORK/cfs-data CMNT=$WORK/cfs
DDATA=$WORK/size-data DMNT=$WORK/size
MDATA=$WORK/mat-data MMNT=$WORK/mat
mkdir -p "$NATIVE" "$BSRC" "$BMNT" "$CDATA" "$CMNT" "$DDATA" "$DMNT" "$MDATA" "$MMNT"
unmount() { # MOUNTPOINT: a stuck mount is detached lazily rather than left behind
    mountpoint -q "$1" || return 0
    timeout 60 umount "$1" || umount -l "$1"
}
cleanup() {
    unmount "$CMNT"
    unmount "$DMNT"
    unmount "$MMNT"
    if mountpoint -q "$BMNT"; then timeout 60 fusermount3 -u "$BMNT" || fusermount3 -uz "$BMNT"; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# One segment holds every line, plus one more line to seal it: the read rows read a sealed
# segment of LINES x 100 bytes.
cat >"$WORK/bench.toml" <<EOF
segment_messages = $LINES
partitions = 1
EOF
# The same store read with passthrough off: the daemon reads the segment's own file.
cat "$WORK/bench.toml" - >"$WORK/fallback.toml" <<EOF
passthrough = false
EOF
# Segments of 100,000 lines seal during one cat of LINES lines, with and without copies.
for materialize in true false; do
    cat >"$WORK/mat-$materialize.toml" <<EOF
segment_messages = 100000
partitions = 1
materialize_segments = $materialize
EOF
done

python3 - "$WORK" "$LINES" "$KEYS" <<'EOF'
import sys
work, count, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(work + "/lines", "w") as out:
    for i in range(count):
        out.write(("key-%08d " % i).ljust(99, "x") + "\n")
# Keyed lines: key kNNNNN, keys in turn, 100 bytes with the newline.
with open(work + "/keyed", "w") as out:
    for i in range(count):
        out.write(("k%05d:" % (i % keys)).ljust(99, "y") + "\n")
EOF
LINE=$(head -n 1 "$WORK/lines")
cat "$WORK/lines" "$WORK/keyed" >/dev/null   # the input comes from the page cache in every run

now() { date +%s.%N; }
calc() { awk "BEGIN { print $1 }"; }
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
bounded() { timeout "$LIMIT" "$@"; }
daemon_pid() { pgrep -f -- "commitfs mount --config [^ ]+ $1 "; }
stopped() { # DATA_DIR: the daemon closes its store after umount returns; wait for it to exit
    local i
    for i in $(seq 600); do daemon_pid "$1" >/dev/null || return 0; sleep 0.1; done
    echo "bench.sh: the daemon on $1 is still running a minute after its unmount" >&2
    return 1
}
materialized() { # SEGMENT_FILE: wait (untimed) until it is a file of its own
    local i
    for i in $(seq "$((LIMIT * 10))"); do
        [ "$(getfattr --absolute-names -n user.materialized --only-values "$1")" = true ] && return 0
        sleep 0.1
    done
    echo "bench.sh: $1 was not materialized within $LIMIT s" >&2
    return 1
}

# Topics of the append rows: keyed with 1 and with 10,000 partitions, unkeyed with 1.
make_topics() {
    mkdir "$CMNT/bench" "$CMNT/keyed1" "$CMNT/keyed$MANY_PARTITIONS" "$CMNT/unkeyed1"
    for topic in keyed1 "keyed$MANY_PARTITIONS"; do
        bounded setfattr -n user.key_separator -v : "$CMNT/$topic"
    done
    bounded setfattr -n user.partitions -v "$MANY_PARTITIONS" "$CMNT/keyed$MANY_PARTITIONS"
    # Warm-up: one line of every key creates the files of every partition the keys reach, so
    # the row measures steady-state appends.
    head -n "$KEYS" "$WORK/keyed" | bounded cat >>"$CMNT/keyed$MANY_PARTITIONS/append"
}
mount_all() {
    bindfs "$BSRC" "$BMNT"
    bounded "$BIN" mount --config "$WORK/bench.toml" "$CDATA" "$CMNT"
    make_topics
}
unmount_all() {
    bounded umount "$CMNT"
    stopped "$CDATA"
    bounded fusermount3 -u "$BMNT"
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
# The append rows: commitfs writes to TOPIC/append, the others to a plain file of that name.
topic_append_file() { # FS TOPIC
    case $1 in
        native) echo "$NATIVE/$2" ;;
        bindfs) echo "$BMNT/$2" ;;
        commitfs) echo "$CMNT/$2/append" ;;
    esac
}

declare -A RESULT
record() { RESULT[$1,$2]+="$3 "; }
timed_cat() { # ROW FS INPUT TARGET: one cat, after writeback of what earlier rows left dirty
    sync
    local t0 t1
    t0=$(now); bounded cat "$3" >>"$4"; t1=$(now)
    record "$1" "$2" "$(calc "$t1 - $t0")"
}

# The second read takes some 20 ms, as long as starting the processes that time it: the row
# times WARM_READS reads in one go and records the seconds of one.
warm_reads() { # ROW FS FILE
    local t0 t1
    # shellcheck disable=SC2016
    t0=$(now); bounded bash -c 'for _ in $(seq "$1"); do dd if="$2" of=/dev/null bs=1M status=none; done' _ "$WARM_READS" "$3"; t1=$(now)
    record "$1" "$2" "$(calc "($t1 - $t0) / $WARM_READS")"
}

# The file systems in the order rep $1 runs them: each leads in turn, so that no row always
# runs first (or last) in a rep, right after a drop of the page cache or another's writes.
rotated() { # REP WORD...
    local lead=$(($1 % ($# - 1))) words=("${@:2}")
    echo "${words[@]:lead}" "${words[@]:0:lead}"
}

for rep in $(seq "$REPS"); do
    mount_all
    for fs in $(rotated "$rep" native bindfs commitfs); do
        f=$(append_file "$fs")
        timed_cat cat "$fs" "$WORK/lines" "$f"
        echo "$LINE" >>"$f"   # seals commitfs's segment; the same line everywhere
    done
    # The read rows read the sealed segment's own file: wait for the copy, outside the rows.
    materialized "$(read_file commitfs)"
    for fs in $(rotated "$rep" native bindfs commitfs); do
        timed_cat keyed1 "$fs" "$WORK/keyed" "$(topic_append_file "$fs" keyed1)"
        timed_cat keyedmany "$fs" "$WORK/keyed" "$(topic_append_file "$fs" "keyed$MANY_PARTITIONS")"
        timed_cat unkeyed1 "$fs" "$WORK/lines" "$(topic_append_file "$fs" unkeyed1)"
    done
    for fs in $(rotated "$rep" native bindfs commitfs); do
        f=$(read_file "$fs")
        drop_caches
        t0=$(now); bounded dd if="$f" of=/dev/null bs=1M status=none; t1=$(now)
        record read1 "$fs" "$(calc "$t1 - $t0")"
        warm_reads read2 "$fs" "$f"
    done
    # The same segment with passthrough off: the daemon serves READs from its own file.
    bounded umount "$CMNT"
    stopped "$CDATA"
    bounded "$BIN" mount --config "$WORK/fallback.toml" "$CDATA" "$CMNT"
    drop_caches
    f=$(read_file commitfs)
    t0=$(now); bounded dd if="$f" of=/dev/null bs=1M status=none; t1=$(now)
    record read1 fallback "$(calc "$t1 - $t0")"
    warm_reads read2 fallback "$f"
    # cat into a partition whose segments seal during it: copies made meanwhile, or none.
    for materialize in $(rotated "$rep" true false); do
        bounded "$BIN" mount --config "$WORK/mat-$materialize.toml" "$MDATA" "$MMNT"
        mkdir "$MMNT/m"
        timed_cat "matcat-$materialize" commitfs "$WORK/lines" "$MMNT/m/0/active"
        bounded umount "$MMNT"
        stopped "$MDATA"
        rm -rf "${MDATA:?}"/*
    done
    for fs in $(rotated "$rep" native bindfs commitfs); do
        f=$(append_file "$fs")
        t0=$(now)
        # shellcheck disable=SC2016
        bounded bash -c 'i=0; while [ $i -lt "$1" ]; do echo "$2" >>"$3"; i=$((i + 1)); done' \
            _ "$ECHOES" "$LINE" "$f"
        t1=$(now)
        record echo "$fs" "$(calc "$t1 - $t0")"
    done
    # Key lookups through the index against stat, process call for process call.
    bounded setfattr -n user.key_separator -v ' ' "$CMNT/bench"
    for i in $(seq 0 999); do printf 'k%04d %s\n' "$i" "$LINE"; done >>"$CMNT/bench/0/active"
    t0=$(now)
    # shellcheck disable=SC2016
    bounded bash -c 'for i in $(seq "$1"); do
            printf -v key "k%04d" $((i % 1000))
            getfattr --absolute-names -n "user.key.$key" --only-values "$2" >/dev/null
        done' _ "$LOOKUPS" "$CMNT/bench/0"
    t1=$(now)
    record getfattr commitfs "$(calc "$t1 - $t0")"
    t0=$(now)
    # shellcheck disable=SC2016
    bounded bash -c 'for i in $(seq "$1"); do stat "$2" >/dev/null; done' _ "$LOOKUPS" "$CMNT/bench/0"
    t1=$(now)
    record stat commitfs "$(calc "$t1 - $t0")"
    unmount_all
done

# The data directory per byte of message, for LINES unkeyed 100-byte messages in ten
# segments, all sealed (a full segment is sealed at once) and copied to files of their own
# before the unmount.
# Commit-log files are preallocated whole (fallocate), so `du` counts the unused tail of the
# newest one: with 4 MiB files that tail is under 4 MiB, and the figure is given twice, with
# the newest file counted (an upper bound) and without it (a lower bound: that file holds at
# least one byte of data). After a clean unmount, so the file prepared ahead of the writer is
# gone. The rest is the consume queue and the store's small files (store.toml, checkpoint,
# the daemon's log); no key index file exists for unkeyed messages. An empty store is
# measured too, with the default configuration.
LOG_FILE_BYTES=$((4 << 20))
cat >"$WORK/size.toml" <<EOF
commit_log_file_bytes = $LOG_FILE_BYTES
segment_messages = $((LINES / 10))
partitions = 1
EOF
bounded "$BIN" mount --config "$WORK/size.toml" "$DDATA" "$DMNT"
mkdir "$DMNT/size"
bounded cat "$WORK/lines" >>"$DMNT/size/0/active"
materialized "$DMNT/size/0/$(printf '%020d' $((LINES / 10 * 9))).log"
bounded umount "$DMNT"
stopped "$DDATA"
allocated() { du -sB1 "$@" | awk '{s += $1} END {print s}'; }
data_dir=$(allocated "$DDATA")
commit_log=$(allocated "$DDATA/commitlog")
queues=$(allocated "$DDATA/queues")
segments=$(allocated "$DDATA/segments")
newest_log_file=$(allocated "$(find "$DDATA/commitlog" -type f | sort | tail -n 1)")
rm -rf "${DDATA:?}"/*
bounded "$BIN" mount "$DDATA" "$DMNT"
empty_store=$(allocated "$DDATA")
bounded umount "$DMNT"
stopped "$DDATA"

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
row "cat $LINES keyed lines ($KEYS keys) >> TOPIC/append, 1 partition (M messages/s)" keyed1 "$LINES / 1000000" "M/s"
row "same, $MANY_PARTITIONS partitions, after a warm-up write (M messages/s)" keyedmany "$LINES / 1000000" "M/s"
row "cat $LINES unkeyed lines >> TOPIC/append, 1 partition (M messages/s)" unkeyed1 "$LINES / 1000000" "M/s"
row "$ECHOES × echo >> file in a shell loop (k lines/s)" echo "$ECHOES / 1000" "k/s"
row "dd bs=1M of the $((bytes / 1000000)) MB segment, first read after drop_caches (GB/s)" read1 "$bytes / 1000000000" "GB/s"
row "dd bs=1M of the same, read again (mean of $WARM_READS reads) (GB/s)" read2 "$bytes / 1000000000" "GB/s"
fallback_row() { # name key: commitfs with passthrough off, against native
    local n c
    n=$(rate "$bytes / 1000000000" "$(med "$2" native)")
    c=$(rate "$bytes / 1000000000" "$(med "$2" fallback)")
    echo "| $1 | $(fmt "$n") GB/s | | $(fmt "$c") GB/s | $(fmt "$(rate "$c" "$n")") | |"
}
fallback_row "same, passthrough off (the daemon reads the segment's own file), first read" read1
fallback_row "same, passthrough off, second read" read2

# Ratios of throughput on commitfs, against the goals of issue 7.
speed() { rate 1 "$(med "$1" "$2")"; }
echo
echo "| ratio of throughputs (medians of $REPS) | commitfs | native (same cat) | goal |"
echo "|---|---|---|---|"
echo "| keyed, $MANY_PARTITIONS partitions / 1 partition | $(fmt "$(rate "$(speed keyedmany commitfs)" "$(speed keyed1 commitfs)")") | $(fmt "$(rate "$(speed keyedmany native)" "$(speed keyed1 native)")") | ≥ 0.9 |"
echo "| keyed / unkeyed, 1 partition, through append | $(fmt "$(rate "$(speed keyed1 commitfs)" "$(speed unkeyed1 commitfs)")") | $(fmt "$(rate "$(speed keyed1 native)" "$(speed unkeyed1 native)")") | ≥ 0.8 |"
echo "| cat into a partition / native | $(fmt "$(rate "$(speed cat commitfs)" "$(speed cat native)")") | 1.00 | ≥ 0.5 |"
echo "| echo loop / bindfs | $(fmt "$(rate "$(speed echo commitfs)" "$(speed echo bindfs)")") | | ≥ 1 |"
echo "| first read of a sealed segment / native | $(fmt "$(rate "$(speed read1 commitfs)" "$(speed read1 native)")") | 1.00 | ≥ 0.9 |"
echo "| second read of a sealed segment / native | $(fmt "$(rate "$(speed read2 commitfs)" "$(speed read2 native)")") | 1.00 | ≥ 0.9 |"
echo "| cat into a partition, 100,000-line segments: materialize_segments on / off | $(fmt "$(rate "$(speed matcat-true commitfs)" "$(speed matcat-false commitfs)")") | | ≥ 0.9 |"

# Every run's seconds, to show the noise behind each median.
echo
echo "| seconds per run | native | bindfs | commitfs |"
echo "|---|---|---|---|"
for key in cat keyed1 keyedmany unkeyed1 echo read1 read2; do
    echo "| $key | ${RESULT[$key,native]}| ${RESULT[$key,bindfs]}| ${RESULT[$key,commitfs]}|"
done
echo "| read1, read2 with passthrough off | | | ${RESULT[read1,fallback]}; ${RESULT[read2,fallback]}|"
echo "| cat, materialize_segments on; off | | | ${RESULT[matcat-true,commitfs]}; ${RESULT[matcat-false,commitfs]}|"
echo "| getfattr, stat | | | ${RESULT[getfattr,commitfs]}; ${RESULT[stat,commitfs]}|"

g=$(rate "$LOOKUPS" "$(med getfattr commitfs)")
s=$(rate "$LOOKUPS" "$(med stat commitfs)")
echo
echo "| process calls on commitfs (median of $REPS) | calls/s |"
echo "|---|---|"
echo "| getfattr -n user.key.K --only-values PARTITION_DIR | $(fmt "$g") |"
echo "| stat PARTITION_DIR | $(fmt "$s") |"
echo "| getfattr / stat | $(fmt "$(rate "$g" "$s")") |"

echo
echo "| data directory after $LINES unkeyed 100-B messages ($((bytes / 1000000)) MB), clean unmount, $((LOG_FILE_BYTES >> 20)) MiB commit-log files | bytes (du) | ÷ message bytes |"
echo "|---|---|---|"
echo "| whole directory (upper bound: counts the newest commit-log file's unused tail) | $data_dir | $(fmt "$(rate "$data_dir" "$bytes")") |"
echo "| whole directory less the newest commit-log file (lower bound) | $((data_dir - newest_log_file)) | $(fmt "$(rate "$data_dir - $newest_log_file" "$bytes")") |"
echo "| of it: commit log (all files) | $commit_log | $(fmt "$(rate "$commit_log" "$bytes")") |"
echo "| of it: consume queues | $queues | $(fmt "$(rate "$queues" "$bytes")") |"
echo "| of it: sealed segments' own files | $segments | $(fmt "$(rate "$segments" "$bytes")") |"
echo "| goal | | ≤ 1.35 |"
echo
echo "| an empty store (built-in defaults, mounted once) | $empty_store bytes | $(fmt "$(calc "$empty_store / 1048576")") MiB (goal ≤ 256) |"
