#!/usr/bin/env bash
# Side by side on one file of device payloads: `iotpipe replay` (validation, stream,
# transform, Parquet, final rollup) against polars converting the same JSON lines to the
# same long-format, Hive-partitioned Parquet plus DuckDB aggregating that Parquet into
# 1-minute windows. Prints wall-clock seconds and peak RSS of each (/usr/bin/time -v).
#
#   bench/compare.sh [FILE]            # FILE default: /tmp/iotpipe-bench-1m.jsonl
#
# FILE is generated when missing: 1,000,000 messages of 10,000 devices (seed 42, 0.5 %
# duplicates, 0.2 % out of order), with device-sim --dump. Environment:
#   BIN=DIR         where iotpipe and device-sim are (default target/release: build them
#                   with `cargo build --release -p iotpipe -p device-sim`)
#   BENCH_VENV=DIR  a venv with polars (created with `pip install polars` when missing;
#                   default .bench-venv)
#   DUCKDB_PYTHON   a Python with duckdb (default $IOTPIPE_TEST_PYTHON, from
#                   `source .test-env/services.env` after tests/setup/services.sh)
#   WORK=DIR        scratch space for the outputs (default a fresh mktemp -d; removed)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
file="${1:-/tmp/iotpipe-bench-1m.jsonl}"
bin="${BIN:-${CARGO_TARGET_DIR:-$root/target}/release}"
venv="${BENCH_VENV:-$root/.bench-venv}"
duck="${DUCKDB_PYTHON:-${IOTPIPE_TEST_PYTHON:-}}"

die() { echo "compare.sh: $*" >&2; exit 1; }
[ -x "$bin/iotpipe" ] && [ -x "$bin/device-sim" ] \
    || die "no $bin/iotpipe or device-sim: cargo build --release -p iotpipe -p device-sim (or set BIN)"
[ -n "$duck" ] || die "no Python with duckdb: source .test-env/services.env (or set DUCKDB_PYTHON)"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing: apt-get install time"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import polars' 2>/dev/null; then
    python3 -m venv "$venv" && "$venv/bin/pip" install -q polars \
        || die "cannot create the polars venv at $venv"
fi

if [ ! -s "$file" ]; then
    echo "generating $file (1,000,000 messages)…" >&2
    start_ms=$(( $(date +%s%3N) - 2 * 3600 * 1000 ))
    "$bin/device-sim" --devices 10000 --rate 1 --duration 100s --seed 42 \
        --fault-duplicate 0.005 --fault-out-of-order 0.002 \
        --start "$start_ms" --dump "$file" --quiet >&2
fi
lines=$(wc -l < "$file")

work="${WORK:-$(mktemp -d)}"
[ -n "${WORK:-}" ] || trap 'rm -rf "$work"' EXIT

# measure NAME CMD…: one run under /usr/bin/time; prints "NAME|seconds|peak MB".
measure() {
    local name="$1"; shift
    local t="$work/$name.time"
    /usr/bin/time -f '%e %M' -o "$t" "$@" > "$work/$name.out" 2> "$work/$name.err" \
        || { cat "$work/$name.err" >&2; die "$name failed"; }
    read -r secs kb < "$t"
    printf '%s|%s|%d\n' "$name" "$secs" $(( kb / 1024 ))
}

results=$(
    measure iotpipe "$bin/iotpipe" replay "$file" --data "$work/iotpipe" --rollup-every 1h \
        --summary-json
    measure polars "$venv/bin/python" "$root/bench/polars_convert.py" "$file" "$work/polars"
    measure duckdb "$duck" "$root/bench/duckdb_aggregate.py" "$work/polars" "$work/stats.parquet"
)
echo "input: $file ($lines lines); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-28s %10s %12s\n' "" "seconds" "peak RSS MB"
echo "$results" | while IFS='|' read -r name secs mb; do
    printf '%-28s %10s %12s\n' "$name" "$secs" "$mb"
done
ip=$(echo "$results" | awk -F'|' '$1=="iotpipe"{print $2}')
py=$(echo "$results" | awk -F'|' '$1!="iotpipe"{s+=$2} END{print s}')
printf '%-28s %10s\n' "polars + duckdb" "$py"
awk -v a="$ip" -v b="$py" 'BEGIN{printf "iotpipe is %.2fx the speed of polars + duckdb (goal: >= 3x)\n", b/a}'
rows=$(tail -n1 "$work/iotpipe.out" | "$duck" -c 'import json,sys; s=json.loads(sys.stdin.read()); print(s["rows"], s["readings"], s["quarantined"])')
echo "iotpipe rows/readings/quarantined: $rows; polars rows: $(tail -n1 "$work/polars.out"); duckdb windows: $(tail -n1 "$work/duckdb.out")"
