#!/usr/bin/env bash
# The 30-day incremental rollup benchmark (issue 13): simulated days of telemetry for a
# small fleet, the rollup after each day, and the incremental run after 5 minutes of new
# data on the first and the last day: wall time, peak RSS and S3-style requests
# (LIST/GET/PUT/DELETE). See analytics/examples/rollup_incremental.rs for what it writes.
#
#   bench/rollup_incremental.sh [DEVICES] [DAYS] [BUCKETS]    # defaults: 100 30 16
#
# Environment:
#   PROFILE=debug|release  which build of the example to run (default debug; build it
#                          with `cargo build --workspace --examples [--release]`)
#   WORK=DIR               scratch space (default a fresh mktemp -d; removed at the end).
#                          100 devices × 30 days take about 0.5 GB.
# Prints one JSON line per day, then the two measurements and their difference.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
profile="${PROFILE:-debug}"
exe="${CARGO_TARGET_DIR:-$root/target}/$profile/examples/rollup_incremental"
[ -x "$exe" ] || { echo "rollup_incremental.sh: no $exe: cargo build --workspace --examples" >&2; exit 1; }

work="${WORK:-$(mktemp -d /tmp/rollup-incremental.XXXXXX)}"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/data"
"$exe" "$work/data" "${1:-100}" "${2:-30}" "${3:-16}" | tee "$work/out.jsonl"
python3 - "$work/out.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
m = [r for r in rows if "measure" in r]
if len(m) != 2:
    sys.exit("expected two measurements (DAYS ≥ 2)")
first, last = m
print(f"day {first['day']} vs day {last['day']} ({first['telemetry_objects']} vs "
      f"{last['telemetry_objects']} telemetry objects in the store):")
for k in ("list", "get", "put", "delete"):
    print(f"  {k.upper():6} {first['requests'][k]:6} {last['requests'][k]:6}")
print(f"  secs   {first['secs']:6.2f} {last['secs']:6.2f}")
print(f"  RSS MB {first['peak_rss_kb']/1024:6.1f} {last['peak_rss_kb']/1024:6.1f}")
PY
