#!/usr/bin/env bash
# Scale benchmark of device-sim against a mosquitto of its own (BENCHMARKS.md):
# connections/s, messages/s, peak RSS per device, and the publish rate an independent
# subscriber sees over the steady part of the run.
#
#   device-sim/bench/scale.sh [DEVICE_SIM_BINARY] -- [device-sim flags]
#   e.g. device-sim/bench/scale.sh target/release/device-sim -- \
#            --devices 10000 --rate 0.2 --duration 60s --connect-rate 2000 --qos 1
#
# Starts `mosquitto` (on PATH) on a free 127.0.0.1 port with max_connections -1 and a
# raised open-file limit, subscribes with mosquitto_sub (QoS 1, one timestamp per
# message), runs device-sim under /usr/bin/time -v, then prints the summary figures and
# the subscriber's messages/s over the run's steady window (the ramp and the last 5 s
# left out). Everything it starts is stopped on exit.
set -euo pipefail

BIN="${1:-target/release/device-sim}"
shift || true
[ "${1:-}" = "--" ] && shift
[ -x "$BIN" ] || { echo "no device-sim binary at $BIN (cargo build --release -p device-sim)" >&2; exit 1; }
command -v mosquitto >/dev/null || { echo "mosquitto not on PATH (apt-get install mosquitto mosquitto-clients)" >&2; exit 1; }

DIR="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat >"$DIR/mosquitto.conf" <<CONF
user root
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
set_tcp_nodelay true
max_inflight_messages 1000
max_queued_messages 0
log_dest file $DIR/mosquitto.log
connection_messages false
CONF
# One socket per device on the broker side too.
( ulimit -n "$(ulimit -Hn)"; exec mosquitto -c "$DIR/mosquitto.conf" ) &
PIDS+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.05
done

mosquitto_sub -h 127.0.0.1 -p "$PORT" -t 'dt/+/+/telemetry' -q 1 -F '%U' >"$DIR/sub.txt" &
PIDS+=($!)
sleep 0.5

/usr/bin/time -v -o "$DIR/time.txt" "$BIN" --broker "mqtt://127.0.0.1:$PORT" \
    --summary-json --quiet "$@" >"$DIR/summary.jsonl" || echo "device-sim exited $?" >&2
sleep 3

python3 - "$DIR" <<'PY'
import json, sys
d = sys.argv[1]
s = json.loads(open(f"{d}/summary.jsonl").read().strip().splitlines()[-1])
rss_kb = next(int(l.split()[-1]) for l in open(f"{d}/time.txt") if "Maximum resident" in l)
cpu = [l.strip() for l in open(f"{d}/time.txt") if "Percent of CPU" in l or "Elapsed (wall" in l]
ts = sorted(float(l.split()[0]) for l in open(f"{d}/sub.txt") if l.strip())
print(f"devices {s['devices']} connected {s['devices_connected']} in {s['connect_span_s']} s "
      f"= {s['connect_rate']} connections/s")
print(f"scheduled {s['scheduled']} sent {s['sent']} acknowledged {s['acknowledged']} "
      f"failed {s['failed']} connection_errors {s['connection_errors']}")
print(f"send_rate {s['send_rate']} msg/s (first to last write), nominal {s['nominal_rate']} msg/s, "
      f"latency p50 {s['publish_latency_p50_ms']} ms p99 {s['publish_latency_p99_ms']} ms")
print(f"peak RSS {rss_kb/1024:.1f} MiB = {rss_kb/s['devices']:.1f} KiB per device; {'; '.join(cpu)}")
print(f"subscriber received {len(ts)} (sent {s['sent']})")
if ts:
    lo, hi = ts[0] + s['connect_span_s'] + 2, ts[-1] - 5
    n = sum(1 for t in ts if lo <= t < hi)
    if hi > lo:
        rate = n / (hi - lo)
        print(f"steady window {hi-lo:.1f} s: {rate:.1f} msg/s received vs nominal "
              f"{s['nominal_rate']} ({(rate / s['nominal_rate'] - 1) * 100:+.2f} %)")
PY
