#!/usr/bin/env bash
# The issue's "done when" over mutual TLS with a broker restart, at full size: 2000 devices,
# 1 msg/s, 15 s, QoS 1, against a mosquitto of its own (mTLS with the test set-up's CA,
# persistence on), stopped with SIGTERM ~9 s in and started again 2 s later. The
# independent subscriber is mosquitto_sub with a persistent session (-c) and the client
# certificate; it prints the distinct (device, seq) it received next to device-sim's
# summary. Needs `source tests/setup/services.sh && services_up` once (for the certificates)
# and a release build:  cargo build --release -p device-sim
#   bash device-sim/bench/restart.sh [DEVICE_SIM_BINARY]
set -u
cd "$(dirname "$0")/../.." || exit 1
# shellcheck source=/dev/null
source .test-env/services.env || { echo "run: source tests/setup/services.sh && services_up" >&2; exit 1; }
C=$IOTPIPE_TEST_CERTS
BIN="${1:-${CARGO_TARGET_DIR:-target}/release/device-sim}"
D=$(mktemp -d); PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > $D/m.conf <<CONF
user root
listener $PORT 127.0.0.1
cafile $C/ca.pem
certfile $C/server.pem
keyfile $C/server.key
require_certificate true
allow_anonymous true
persistence true
persistence_location $D/
max_connections -1
max_inflight_messages 1000
max_queued_messages 0
set_tcp_nodelay true
log_dest file $D/m.log
CONF
start() { ( ulimit -n 20000; exec mosquitto -c $D/m.conf ) & MPID=$!; sleep 0.5; }
start
mosquitto_sub -h 127.0.0.1 -p $PORT --cafile $C/ca.pem --cert $C/client.pem --key $C/client.key -i i5-restart-sub -c -q 1 -t 'dt/restart/+/telemetry' > $D/sub.txt 2>$D/sub.err & SPID=$!
sleep 1
$BIN --broker mqtts://127.0.0.1:$PORT --ca $C/ca.pem --cert $C/client.pem --key $C/client.key --fleet restart --devices 2000 --rate 1 --duration 15s --qos 1 --ack-timeout 20s --summary-json --quiet > $D/summary.jsonl 2>$D/sim.err & DPID=$!
sleep 9; kill -TERM $MPID; wait $MPID; echo "broker stopped at ~9 s"; sleep 2; start; echo "broker restarted"
wait $DPID; echo "device-sim exit $?"; sleep 5; kill $SPID; kill -TERM $MPID
python3 - $D <<'PY'
import json,sys
d=sys.argv[1]
s=json.loads(open(f"{d}/summary.jsonl").read().strip().splitlines()[-1])
print({k:s[k] for k in ["devices_connected","connection_errors","republished","scheduled","sent","acknowledged","failed","dropped","elapsed_s"]})
lines=[l for l in open(f"{d}/sub.txt") if l.strip()]
keys=set()
for l in lines:
    m=json.loads(l); keys.add((m["device_id"],m["seq"]))
print(f"subscriber: {len(lines)} deliveries, {len(keys)} distinct (device, seq); expected {s['scheduled']}")
PY
tail -2 $D/sim.err
rm -rf "$D"
