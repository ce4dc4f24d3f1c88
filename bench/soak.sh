#!/usr/bin/env bash
# Soak (issue 10): `iotpipe up` for a long run against a private mosquitto, with the
# broker restarted half-way and AWS-side faults injected, sampling the process's RSS.
# Prints the summary's accounting (sent = stored + quarantined), the peak RSS and the RSS
# over time, so that "memory stayed flat" is read from numbers, not assumed.
#
#   bench/soak.sh [DURATION_S] [DEVICES] [RATE]      (defaults: 600 s, 2000 devices, 2/s)
#
#   BIN=DIR     where iotpipe is (default: $CARGO_TARGET_DIR/release or target/release)
#   INJECT=...  the fault spec (default: throttle=0.05,partial=0.01,timeout=0.001,processor-error=0.01)
#   TOPOLOGY=.. (default per-message: the put faults apply to the ingest → stream path)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
duration="${1:-600}"
devices="${2:-2000}"
rate="${3:-2}"
bin="${BIN:-${CARGO_TARGET_DIR:-$root/target}/release}"
inject="${INJECT:-throttle=0.05,partial=0.01,timeout=0.001,processor-error=0.01}"
topology="${TOPOLOGY:-per-message}"
[[ -x "$bin/iotpipe" ]] || { echo "soak.sh: no $bin/iotpipe: cargo build --release -p iotpipe (or set BIN)" >&2; exit 1; }
command -v mosquitto >/dev/null || { echo "soak.sh: no mosquitto (apt-get install mosquitto)" >&2; exit 1; }

work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
# Persistence: the restart keeps the rule's persistent session and what is queued for it
# (mosquitto saves its database when stopped); no queue limit, so a restart loses nothing.
# `user`: mosquitto started as root drops to the `mosquitto` user, which cannot write the
# (private) work directory, and then saves nothing at the restart.
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nmax_queued_messages 0\nuser %s\n' \
    "$port" "$work" "$(id -un)" > "$work/mosquitto.conf"
broker_pid=
start_broker() { mosquitto -c "$work/mosquitto.conf" > "$work/mosquitto.log" 2>&1 & broker_pid=$!; sleep 0.5; }
cleanup() { [[ -n "$broker_pid" ]] && kill "$broker_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
start_broker

echo "soak: ${duration}s, $devices devices × $rate msg/s, topology $topology, inject $inject, broker :$port"
"$bin/iotpipe" up --devices "$devices" --rate "$rate" --duration "${duration}s" \
    --broker "mqtt://127.0.0.1:$port" --topology "$topology" --inject "$inject" \
    --rollup-every 60s --summary-json --data "$work/data" > "$work/summary.out" 2> "$work/up.err" &
up_pid=$!
restarted=0
t0=$(date +%s)
echo "elapsed_s rss_mb"
while kill -0 "$up_pid" 2>/dev/null; do
    sleep 10
    now=$(( $(date +%s) - t0 ))
    rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$up_pid/status" 2>/dev/null || echo -)
    echo "$now $rss"
    if (( restarted == 0 && now >= duration / 2 )); then
        echo "restarting the broker at ${now}s"
        kill "$broker_pid"; wait "$broker_pid" 2>/dev/null || true
        sleep 2
        start_broker
        restarted=1
    fi
done
wait "$up_pid" && status=0 || status=$?
echo "iotpipe up exited with $status"
python3 - "$work/summary.out" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
s = json.loads(lines[-1])
f = s.get("firehose") or {}
print(f"sent {s['sent']}  acknowledged {s['acknowledged']}  received {s['received']}  "
      f"accepted {s['accepted']}  quarantined {s['quarantined']}")
print(f"readings {s['readings']}  rows in Parquet {s['rows']}  ledger missing {s['ledger']['missing']}  "
      f"duplicated {s['ledger']['duplicated']}")
print(f"faults {json.dumps(s.get('faults'))}")
print(f"peak RSS {s['peak_rss_mb']} MB  messages/s {s['messages_per_s']:.0f}")
PY
tail -3 "$work/up.err"
exit "$status"
