#!/usr/bin/env python3
"""Cold start and peak memory of each Lambda binary (ingest, transform, rollup), measured
as Lambda would see them, against a minimal Lambda Runtime API served by this script.

    source tests/setup/services.sh && services_up          # moto, for ingest's Kinesis/S3
    cargo build --release -p ingest -p transform -p analytics --bins
    cargo build -p iotpipe -p device-sim                     # prepares the rollup's data
    .test-env/moto-venv/bin/python tests/lambda/coldstart.py [--runs N] [--profile release]

For each function and run: a fresh process of the binary, with AWS_LAMBDA_RUNTIME_API
pointing at this script's server on 127.0.0.1.
- **init**: from just before the process is spawned to its first
  `GET /2018-06-01/runtime/invocation/next` — what Lambda reports as Init Duration (exec,
  tracing, configuration, AWS SDK configuration and clients).
- **duration**: from handing out the event to receiving its response.
- **peak RSS**: VmHWM of /proc/PID/status once the response is in (the function is then
  parked in its next `next` call) — what Lambda reports as Max Memory Used.

The events are 500 records each: ingest gets an IoT rule event whose payload is a
device-side batch of 500 messages (to a moto Kinesis stream, quarantine to a moto bucket);
transform gets a Firehose event of 500 Kinesis-source records; rollup gets the scheduled
event over a data directory of 500 replayed messages (1,500 readings). Prints a Markdown
table and one JSON line. Needs IOTPIPE_TEST_MOTO; fails without it.
"""

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/iot-pipeline/target"))
REGION = "us-east-1"
CREDS = {"AWS_ACCESS_KEY_ID": "iotpipe-test", "AWS_SECRET_ACCESS_KEY": "iotpipe-test-secret"}
RECORDS = 500


class Runtime:
    """One invocation's worth of Lambda Runtime API: hands out `event` once, collects the
    response, and notes when each step happened."""

    def __init__(self, event: bytes) -> None:
        self.event = event
        self.first_next = None
        self.sent = None
        self.done = None
        self.response = None
        self.error = None
        self.parked = threading.Event()
        self.finished = threading.Event()
        rt = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if not self.path.endswith("/runtime/invocation/next"):
                    self.send_error(404)
                    return
                if rt.first_next is None:
                    rt.first_next = time.monotonic_ns()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Lambda-Runtime-Aws-Request-Id", "coldstart-1")
                    self.send_header("Lambda-Runtime-Deadline-Ms",
                                     str(int(time.time() * 1000) + 60_000))
                    self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                                     "arn:aws:lambda:us-east-1:000000000000:function:f")
                    self.send_header("Lambda-Runtime-Trace-Id", "Root=1-0-0")
                    self.send_header("Content-Length", str(len(rt.event)))
                    self.end_headers()
                    rt.sent = time.monotonic_ns()
                    self.wfile.write(rt.event)
                else:
                    # The second `next`: the function is idle. Park it until it is killed.
                    rt.parked.set()
                    rt.finished.wait(120)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.endswith("/response"):
                    rt.done = time.monotonic_ns()
                    rt.response = body
                else:
                    rt.error = (self.path, body)
                    rt.done = time.monotonic_ns()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.finished.set()
        self.server.shutdown()


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def measure(binary: Path, env: dict, event: bytes) -> dict:
    rt = Runtime(event)
    full_env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
                "RUST_LOG": "warn", "AWS_REGION": REGION, **CREDS, **env,
                "AWS_LAMBDA_FUNCTION_NAME": binary.name, "AWS_LAMBDA_FUNCTION_VERSION": "1",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
                "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{rt.port}"}
    t0 = time.monotonic_ns()
    proc = subprocess.Popen([str(binary)], env=full_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    hwm = None
    try:
        if rt.parked.wait(60):
            hwm = vm_hwm_mib(proc.pid)
    finally:
        proc.kill()
        out = proc.communicate()[0].decode(errors="replace")
        rt.close()
    if hwm is None:
        raise RuntimeError(f"{binary.name} did not finish the invocation (exit {proc.returncode}, "
                           f"error {rt.error}):\n{out}")
    if rt.error is not None:
        raise RuntimeError(f"{binary.name} reported an error: {rt.error}\n{out}")
    return {"init_ms": (rt.first_next - t0) / 1e6, "duration_ms": (rt.done - rt.sent) / 1e6,
            "peak_rss_mib": hwm, "response": rt.response}


def message(device: int, seq: int, now: int) -> dict:
    return {"device_id": f"sensor-{device:06}", "seq": seq, "ts": now - 60_000 + seq,
            "metrics": {"temperature": 21.5 + seq % 7, "humidity": 40.0, "battery": 3.7},
            "fw": "1.4.2"}


def ingest_event(now: int) -> bytes:
    batch = [message(1, s, now) for s in range(RECORDS)]
    return json.dumps({"payload": base64.b64encode(json.dumps(batch).encode()).decode(),
                       "topic": "dt/fleet/sensor-000001/telemetry",
                       "received_at": now}).encode()


def transform_event(now: int) -> bytes:
    records = []
    for i in range(RECORDS):
        rec = {**message(i % 50, i, now), "received_at": now}
        records.append({
            "recordId": f"{i:056}", "approximateArrivalTimestamp": now,
            "data": base64.b64encode(json.dumps(rec).encode()).decode(),
            "kinesisRecordMetadata": {"shardId": "shardId-000000000000",
                                      "partitionKey": rec["device_id"],
                                      "approximateArrivalTimestamp": now,
                                      "sequenceNumber": f"{49 * 10**40 + i}",
                                      "subsequenceNumber": 0}})
    return json.dumps({"invocationId": "coldstart",
                       "deliveryStreamArn": "arn:aws:firehose:us-east-1:0:deliverystream/d",
                       "sourceKinesisStreamArn": "arn:aws:kinesis:us-east-1:0:stream/s",
                       "region": REGION, "records": records}).encode()


def rollup_data(profile_dir: Path, tmp: Path, now: int) -> Path:
    """A data directory holding the Parquet of RECORDS replayed messages."""
    raw = tmp / "raw.jsonl"
    raw.write_text("".join(json.dumps(message(i % 10, i, now)) + "\n" for i in range(RECORDS)))
    data = tmp / "data"
    iotpipe = TARGET / "debug" / "iotpipe"
    if not iotpipe.exists():
        sys.exit(f"{iotpipe} is not built: cargo build -p iotpipe")
    subprocess.run([str(iotpipe), "replay", str(raw), "--data", str(data)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "RUST_LOG": "error"})
    # The replay ran its own final rollup: drop its state so the measured run does it all.
    for p in sorted((data / "stats").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", default="release")
    ap.add_argument("--env", action="append", default=[], metavar="VAR=VALUE",
                    help="extra environment of every function, e.g. SSL_CERT_DIR=/nonexistent")
    args = ap.parse_args()
    extra = dict(e.split("=", 1) for e in args.env)
    moto = os.environ.get("IOTPIPE_TEST_MOTO", "")
    if not moto:
        sys.exit("IOTPIPE_TEST_MOTO is not set: source tests/setup/services.sh && services_up")
    import boto3  # moto's venv has it

    bins = TARGET / args.profile
    now = int(time.time() * 1000)
    kw = dict(endpoint_url=moto, region_name=REGION, aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
              aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])
    name = f"coldstart-{os.getpid()}-{now % 10**9}"
    boto3.client("kinesis", **kw).create_stream(StreamName=name, ShardCount=1)
    boto3.client("s3", **kw).create_bucket(Bucket=name)

    with tempfile.TemporaryDirectory() as tmp:
        data = rollup_data(bins, Path(tmp), now)
        functions = [
            ("ingest", {"AWS_ENDPOINT_URL": moto, "IOTPIPE_SINK": "kinesis",
                        "IOTPIPE_STREAM_NAME": name, "IOTPIPE_BUCKET": name},
             ingest_event(now)),
            ("transform", {}, transform_event(now)),
            ("rollup", {"IOTPIPE_DATA": str(data)},
             json.dumps(json.load(open(ROOT / "analytics/tests/fixtures/scheduled-event.json"))).encode()),
        ]
        rows = []
        for fn, env, event in functions:
            binary = bins / fn
            if not binary.exists():
                sys.exit(f"{binary} is not built: cargo build --{args.profile} -p ingest "
                         f"-p transform -p analytics --bins")
            runs = [measure(binary, {**env, **extra}, event) for _ in range(args.runs)]
            if fn == "rollup":
                # Later runs find the checkpoint and do little: report the first.
                rows_rss = [runs[0]["peak_rss_mib"]]
                durations = [runs[0]["duration_ms"]]
            else:
                rows_rss = [r["peak_rss_mib"] for r in runs]
                durations = [r["duration_ms"] for r in runs]
            inits = [r["init_ms"] for r in runs]
            rows.append({"function": fn, "binary_mib": binary.stat().st_size / 2**20,
                         "init_ms_median": statistics.median(inits), "init_ms_max": max(inits),
                         "duration_ms_median": statistics.median(durations),
                         "peak_rss_mib_max": max(rows_rss), "runs": args.runs})
            print(f"{fn}: first response {runs[0]['response'][:120]!r}", file=sys.stderr)
    print(f"| function | binary | init (median / max of {args.runs}) | 500-record invocation "
          "| peak RSS (VmHWM) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['function']} | {r['binary_mib']:.1f} MiB | {r['init_ms_median']:.1f} / "
              f"{r['init_ms_max']:.1f} ms | {r['duration_ms_median']:.1f} ms | "
              f"{r['peak_rss_mib_max']:.1f} MiB |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
