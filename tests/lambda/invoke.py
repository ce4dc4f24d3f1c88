#!/usr/bin/env python3
"""Each Lambda binary as a real process under `cargo lambda watch --only-lambda-apis` (the
Lambda Runtime API emulator), invoked with the repository's fixture events through
`cargo lambda invoke`, its AWS clients pointed at the moto server.

    source tests/setup/services.sh && services_up
    cargo build -p ingest -p transform -p analytics --bins
    .test-env/moto-venv/bin/python tests/lambda/invoke.py   # moto's venv: it has boto3

Checks: the transform answers every recordId once with Ok/Dropped/ProcessingFailed; ingest
(Kinesis and Firehose sinks, S3 quarantine) reports what it did and the records are in the
stream / the bucket; rollup runs on the bucket and refuses a non-scheduled event, marks the
objects of an SQS batch of S3 Object Created events pending; the rollup-worker job answers
an SQS batch of units with the failed ones only; a bad
configuration fails the cold start naming the variable. Prints each function's peak RSS
(what Lambda reports as Max Memory Used). Needs IOTPIPE_TEST_MOTO and
IOTPIPE_TEST_CARGO_LAMBDA: fails without them, never skips. Every process it starts, it
stops. Ends with an 'N passed, N failed' line.
"""

import base64
import json
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/iot-pipeline/target"))
BIN = TARGET / "debug"
LOGS = ROOT / ".test-env" / "lambda"
REGION = "us-east-1"
CREDS = {"AWS_ACCESS_KEY_ID": "iotpipe-test", "AWS_SECRET_ACCESS_KEY": "iotpipe-test-secret"}
RESULTS = {"Ok", "Dropped", "ProcessingFailed"}


def need(var: str) -> str:
    value = os.environ.get(var, "")
    if not value:
        sys.exit(f"{var} is not set: run `bash tests/run.sh`, or `source tests/setup/services.sh "
                 f"&& services_up` first")
    return value


MOTO = need("IOTPIPE_TEST_MOTO")
CARGO_LAMBDA = need("IOTPIPE_TEST_CARGO_LAMBDA")
STARTED: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start (see {LOGS})")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} does not listen on 127.0.0.1:{port} after 30 s")


def start(name: str, argv: list, env: dict, cwd=None) -> subprocess.Popen:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=cwd)
    STARTED.append(proc)
    return proc


def aws_env() -> dict:
    """A clean environment: the moto endpoint and test credentials, nothing of the
    developer's own AWS set-up."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
            "AWS_ENDPOINT_URL": MOTO, "AWS_REGION": REGION, "RUST_LOG": "info", **CREDS}


class Emulator:
    def __init__(self) -> None:
        self.port = free_port()
        proc = start("watch", [CARGO_LAMBDA, "lambda", "watch", "--only-lambda-apis",
                               "--invoke-address", "127.0.0.1", "--invoke-port", str(self.port)],
                     {**os.environ}, cwd=ROOT)
        wait_port(self.port, proc, "cargo lambda watch")

    def function(self, binary: str, env: dict, log: str = "") -> subprocess.Popen:
        """Starts `binary` as the function of the same name (the emulator only routes to
        functions named like the project's binaries): its runtime polls that route."""
        name = binary
        return start(log or name, [str(BIN / binary)], {
            **aws_env(), **env,
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_VERSION": "1",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{self.port}/.rt/{name}",
        })

    def invoke(self, name: str, event) -> tuple[int, str]:
        """Invokes `name` with `event` (a fixture path, or an object sent as JSON)."""
        data = (["--data-file", str(event)] if isinstance(event, Path)
                else ["--data-ascii", json.dumps(event)])
        done = subprocess.run([CARGO_LAMBDA, "lambda", "invoke", name,
                               "--invoke-address", "127.0.0.1", "--invoke-port", str(self.port),
                                *data], capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr


def ok_json(rc: int, out: str) -> dict:
    assert rc == 0, f"invoke failed ({rc}): {out}"
    return json.loads(out)


def peak_rss_mib(proc: subprocess.Popen) -> float:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fixture(crate: str, name: str) -> Path:
    return ROOT / crate / "tests" / "fixtures" / name


def main() -> int:
    session = boto3.session.Session(region_name=REGION, aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                                    aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])
    kinesis = session.client("kinesis", endpoint_url=MOTO)
    firehose = session.client("firehose", endpoint_url=MOTO)
    s3 = session.client("s3", endpoint_url=MOTO)
    run_id = f"{os.getpid()}-{time.time_ns()}"
    bucket, stream, delivery = f"lambda-{run_id}", f"lambda-{run_id}", f"lambda-fh-{run_id}"
    s3.create_bucket(Bucket=bucket)
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    firehose.create_delivery_stream(
        DeliveryStreamName=delivery, DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={"RoleARN": "arn:aws:iam::123456789012:role/fh",
                                            "BucketARN": f"arn:aws:s3:::{bucket}",
                                            "Prefix": "firehose/"})

    emu = Emulator()
    t0 = time.monotonic()
    peak: dict[str, float] = {}

    def stop(label: str, proc: subprocess.Popen) -> None:
        """Records the function's peak RSS, then stops it (a function that exited on its
        own has failed its cold start)."""
        assert proc.poll() is None, f"{label} exited ({proc.returncode}): see {LOGS}/{label}.log"
        peak[label] = peak_rss_mib(proc)
        proc.terminate()
        proc.wait(timeout=10)

    def transform_answers_every_record_once():
        fn = emu.function("transform", {})
        for name in ["firehose-good-batch.json", "firehose-bad-records.json",
                     "firehose-duplicates.json"]:
            event = json.loads(fixture("transform", name).read_text())
            resp = ok_json(*emu.invoke("transform", fixture("transform", name)))
            ids_in = [r["recordId"] for r in event["records"]]
            ids_out = [r["recordId"] for r in resp["records"]]
            assert sorted(ids_out) == sorted(ids_in), f"{name}: not one answer per recordId"
            assert all(r["result"] in RESULTS for r in resp["records"]), name
            if name == "firehose-good-batch.json":
                assert all(r["result"] == "Ok" for r in resp["records"]), resp
        stop("transform", fn)

    def ingest_puts_to_kinesis_and_quarantines_to_s3():
        fn = emu.function("ingest", {
            "IOTPIPE_SINK": "kinesis", "IOTPIPE_STREAM_NAME": stream,
            "IOTPIPE_BUCKET": bucket, "IOTPIPE_QUARANTINE_PREFIX": "quarantine/"})
        one = ok_json(*emu.invoke("ingest", fixture("ingest", "iot-rule-event.json")))
        assert (one["messages"], one["accepted"], one["quarantined"]) == (1, 1, 0), one
        batch = ok_json(*emu.invoke("ingest", fixture("ingest", "iot-rule-event-batch.json")))
        assert (batch["messages"], batch["accepted"], batch["quarantined"]) == (3, 2, 1), batch
        seqs = []
        for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
            it = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                            ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            for r in kinesis.get_records(ShardIterator=it, Limit=100)["Records"]:
                assert r["PartitionKey"] == "sensor-000042", r
                seqs.append(json.loads(r["Data"])["seq"])
        assert sorted(seqs) == [12345, 12346, 12348], seqs
        keys = [o["Key"] for o in
                s3.list_objects_v2(Bucket=bucket, Prefix="quarantine/").get("Contents", [])]
        assert len(keys) == 1 and keys[0].startswith("quarantine/dt="), keys
        lines = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read().splitlines()
        assert len(lines) == 1 and b"hot" in base64.b64decode(json.loads(lines[0])["payload_b64"])
        stop("ingest", fn)

    def ingest_puts_to_firehose():
        fn = emu.function("ingest", {"IOTPIPE_SINK": "firehose", "IOTPIPE_STREAM_NAME": delivery,
                                     "IOTPIPE_BUCKET": bucket}, log="ingest-firehose")
        one = ok_json(*emu.invoke("ingest", fixture("ingest", "iot-rule-event.json")))
        assert (one["messages"], one["accepted"]) == (1, 1), one
        objs = s3.list_objects_v2(Bucket=bucket, Prefix="firehose/").get("Contents", [])
        assert len(objs) == 1, objs
        body = s3.get_object(Bucket=bucket, Key=objs[0]["Key"])["Body"].read()
        record = json.loads(body)
        assert (record["device_id"], record["seq"]) == ("sensor-000042", 12345), record
        stop("ingest-firehose", fn)

    def rollup_runs_on_the_bucket_and_refuses_other_events():
        fn = emu.function("rollup", {
            "IOTPIPE_JOB": "rollup", "IOTPIPE_BUCKET": bucket,
            "IOTPIPE_TELEMETRY_PREFIX": "telemetry/", "IOTPIPE_STATS_PREFIX": "stats/",
            "IOTPIPE_STATE_PREFIX": "state/"})
        report = ok_json(*emu.invoke("rollup", fixture("analytics", "scheduled-event.json")))
        assert "files_scanned" in report and report["skipped_files"] == [], report
        rc, out = emu.invoke("rollup", {"detail-type": "Object Created", "source": "aws.s3",
                                        "detail": {}})
        assert rc != 0 and "Scheduled Event" in out, f"({rc}) {out}"
        stop("rollup", fn)

    def sqs_event(bodies: list) -> dict:
        return {"Records": [{"messageId": f"m-{i}", "receiptHandle": f"r-{i}", "body": b,
                             "attributes": {}, "messageAttributes": {}, "md5OfBody": "",
                             "eventSource": "aws:sqs", "awsRegion": REGION,
                             "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:q"}
                            for i, b in enumerate(bodies)]}

    def rollup_marks_new_objects_from_an_sqs_batch_of_s3_events():
        key = "telemetry/dt=2026-11-25/hour=16/firehose-1.parquet"
        s3.put_object(Bucket=bucket, Key=key, Body=b"not parquet")  # a unit skips it
        event = json.loads(fixture("analytics", "s3-object-created-eventbridge.json").read_text())
        event["detail"]["bucket"]["name"], event["detail"]["object"]["key"] = bucket, key
        fn = emu.function("rollup", {
            "IOTPIPE_JOB": "rollup", "IOTPIPE_BUCKET": bucket,
            "IOTPIPE_TELEMETRY_PREFIX": "telemetry/", "IOTPIPE_STATS_PREFIX": "stats/",
            "IOTPIPE_STATE_PREFIX": "state/"})
        resp = ok_json(*emu.invoke("rollup", sqs_event([json.dumps(event), "junk"])))
        assert resp["batchItemFailures"] == [{"itemIdentifier": "m-1"}], resp
        # The unreadable object keeps its marker, so later runs retry it.
        s3.head_object(Bucket=bucket, Key=f"stats/_pending/{key}")
        stop("rollup", fn)

    def rollup_worker_reports_only_the_failed_units():
        fn = emu.function("rollup", {
            "IOTPIPE_JOB": "rollup-worker", "IOTPIPE_BUCKET": bucket,
            "IOTPIPE_TELEMETRY_PREFIX": "telemetry/", "IOTPIPE_STATS_PREFIX": "stats/",
            "IOTPIPE_STATE_PREFIX": "state/"}, log="rollup-worker")
        unit = {"unit": {"partition": {"dt": "2026-11-25", "hour": "17"}, "bucket": 0, "buckets": 16}}
        resp = ok_json(*emu.invoke("rollup", sqs_event([json.dumps(unit), "{\"not\":\"a unit\"}"])))
        assert resp["batchItemFailures"] == [{"itemIdentifier": "m-1"}], resp
        stop("rollup-worker", fn)

    def a_bad_configuration_fails_the_cold_start_naming_the_variable():
        for env, var in [({}, "IOTPIPE_SINK"),
                         ({"IOTPIPE_SINK": "kinesis", "IOTPIPE_STREAM_NAME": stream}, "IOTPIPE_BUCKET")]:
            proc = emu.function("ingest", env, log="ingest-bad")
            rc = proc.wait(timeout=30)
            log = (LOGS / "ingest-bad.log").read_text()
            assert rc != 0 and var in log, f"({rc}) {log}"
        # (compact is a real job since compaction landed: a job name that is none fails.)
        proc = emu.function("rollup", {"IOTPIPE_JOB": "compress", "IOTPIPE_BUCKET": bucket},
                            log="rollup-bad")
        rc = proc.wait(timeout=30)
        log = (LOGS / "rollup-bad.log").read_text()
        assert rc != 0 and "IOTPIPE_JOB" in log, f"({rc}) {log}"

    checks = [transform_answers_every_record_once, ingest_puts_to_kinesis_and_quarantines_to_s3,
              ingest_puts_to_firehose, rollup_runs_on_the_bucket_and_refuses_other_events,
              rollup_marks_new_objects_from_an_sqs_batch_of_s3_events,
              rollup_worker_reports_only_the_failed_units,
              a_bad_configuration_fails_the_cold_start_naming_the_variable]
    passed = failed = 0
    for check in checks:
        try:
            check()
            passed += 1
            print(f"test {check.__name__} ... ok")
        except Exception:  # one failing check must not hide the others
            failed += 1
            print(f"test {check.__name__} ... FAILED")
            traceback.print_exc()
    print(f"checks took {time.monotonic() - t0:.1f}s")
    for label, mib in peak.items():
        print(f"{label}: peak RSS {mib:.1f} MiB")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for p in STARTED:
            if p.poll() is None:
                p.terminate()
        for p in STARTED:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
