#!/usr/bin/env python3
"""Monthly AWS bill estimate for the iot-pipeline stack (stdlib only, no network).

Called by `infra/deploy.sh --dry-run`; runnable alone:

  python3 infra/cost.py --devices 1000 --rate 0.2
  python3 infra/cost.py --help

Every price lives in PRICES below, with the date it was taken. Update that table (and
PRICES_AS_OF) when AWS changes a price; nothing else in this file holds a price.
No free tier is applied (a new account's Lambda/S3/CloudWatch free tier would lower the
small lines). Data transfer is zero: MQTT ingress is free and everything stays in-region.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

# ------------------------------------------------------------------------------------------
# us-east-1 list prices, USD. Taken from the public AWS pricing pages on PRICES_AS_OF.
# ------------------------------------------------------------------------------------------
PRICES_AS_OF = "2025-11-25"
PRICES = {
    # AWS IoT Core
    "iot_connect_per_million_min": 0.08,  # connectivity, per million connection-minutes
    "iot_msg_tiers": [  # messaging, per million messages (5 KB units), tiered per month
        (1_000_000_000, 1.00),  # first 1 billion
        (4_000_000_000, 0.80),  # next 4 billion
        (math.inf, 0.70),  # over 5 billion
    ],
    "iot_rule_per_million": 0.15,  # rules triggered (5 KB units)
    "iot_action_per_million": 0.15,  # actions executed (5 KB units)
    # AWS Lambda
    "lambda_req_per_million": 0.20,
    "lambda_gb_s": {"arm64": 0.0000133334, "x86_64": 0.0000166667},
    # Kinesis Data Streams
    "kds_od_stream_hour": 0.04,  # on-demand, per stream-hour
    "kds_od_ingest_gb": 0.08,  # on-demand, per GB written (each record rounded up to 1 KB)
    "kds_od_retrieval_gb": 0.04,  # on-demand, per GB read (shared-throughput consumers)
    "kds_shard_hour": 0.015,  # provisioned, per shard-hour
    "kds_put_unit_per_million": 0.014,  # provisioned, per million 25 KB PUT payload units
    # Amazon Data Firehose (Kinesis Data Streams as source)
    "fh_ingest_gb": 0.029,  # first 500 TB/month, each record rounded up to 5 KB
    "fh_format_conversion_gb": 0.018,  # JSON -> Parquet, per GB ingested
    "fh_dp_gb": 0.020,  # dynamic partitioning, per GB processed
    "fh_dp_per_1000_objects": 0.005,  # dynamic partitioning, per 1,000 S3 objects delivered
    # Amazon S3 Standard
    "s3_gb_month": 0.023,
    "s3_put_per_1000": 0.005,
    "s3_get_per_1000": 0.0004,
    # Amazon CloudWatch
    "cw_logs_ingest_gb": 0.50,
    "cw_logs_store_gb_month": 0.03,
    "cw_alarm_month": 0.10,  # standard-resolution metric alarm
    # EventBridge Scheduler, SQS, KMS
    "scheduler_per_million": 1.00,
    "kms_per_10k_requests": 0.03,
}

HOURS_PER_MONTH = 730  # the AWS pricing convention
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
MINUTES_PER_MONTH = HOURS_PER_MONTH * 60
KB = 1024
GB = 1024**3

# ------------------------------------------------------------------------------------------
# Assumptions that are not prices. Each is a flag, so a measured value can replace it.
# ------------------------------------------------------------------------------------------
DEFAULTS = {
    "metrics": 3,  # readings per message (rows per message in telemetry)
    "stream_overhead_bytes": 64,  # normalized record = payload + received_at etc.
    "row_json_bytes": 130,  # transform output per reading (JSON row for the Parquet conversion)
    "parquet_bytes_per_row": 16,  # Firehose Parquet (snappy), long layout
    "stats_bytes_per_row": 48,  # stats_1m Parquet row
    "ingest_ms": 20,  # billed duration per ingest invocation (validate + one PutRecords)
    "ingest_mb": 128,
    "ingest_log_bytes": 20,  # per invocation; platform lines off (SystemLogLevel WARN)
    "transform_ms_per_mib": 150,  # per 1 MiB of Firehose batch
    "transform_batch_mib": 0.5,  # BufferSizeInMBs of the Firehose processor in template.yaml
    "transform_mb": 512,
    "rollup_base_ms": 500,  # per run, plus rollup_us_per_row for the rows it reads
    "rollup_us_per_row": 2.0,
    "rollup_mb": 1024,
    "compact_base_ms": 5000,  # per daily run, plus compact_us_per_row
    "compact_us_per_row": 1.0,
    "compact_mb": 2048,
    "job_log_bytes": 1500,  # per transform/rollup/compact invocation (START/END/REPORT + a few lines)
    "log_days_stored": 14,  # LogRetentionDays
    "firehose_flushes_per_hour": 4,  # 900 s buffer interval, one live dt/hour partition
    "kms_callers": 4,  # producers + consumers each asking KMS for a data key every 5 minutes
    "esm_batch": 100,  # records per ingest invocation in the Kinesis event-source-mapping variant
}


def iot_messaging_cost(units: float) -> float:
    cost, left = 0.0, units
    for size, price in PRICES["iot_msg_tiers"]:
        take = min(left, size)
        cost += take / 1e6 * price
        left -= take
        if left <= 0:
            break
    return cost


def units_5kb(nbytes: float) -> int:
    return max(1, math.ceil(nbytes / (5 * KB)))


class Estimate:
    def __init__(self, a: argparse.Namespace, alarms: int):
        self.a = a
        self.alarms = alarms
        self.rows: list[tuple[str, str, str, float]] = []  # service, item, usage, usd

    def add(self, service: str, item: str, usage: str, usd: float) -> None:
        self.rows.append((service, item, usage, usd))

    @property
    def total(self) -> float:
        return sum(r[3] for r in self.rows)

    def lambda_cost(self, invocations: float, ms: float, mb: int) -> tuple[float, float]:
        gb_s = invocations * math.ceil(ms) / 1000 * mb / 1024
        req = invocations / 1e6 * PRICES["lambda_req_per_million"]
        return req, gb_s * PRICES["lambda_gb_s"][self.a.arch]

    def compute(self) -> "Estimate":
        a, p = self.a, PRICES
        msgs = a.devices * a.rate * SECONDS_PER_MONTH  # messages per month
        msg_units = msgs * units_5kb(a.payload_bytes)
        rows = msgs * a.metrics
        rec_bytes = a.payload_bytes + a.stream_overhead_bytes
        stream_gb = msgs * rec_bytes / GB

        # --- IoT Core
        self.add("IoT Core", "connectivity", f"{a.devices:,} devices x {MINUTES_PER_MONTH:,} min",
                 a.devices * MINUTES_PER_MONTH / 1e6 * p["iot_connect_per_million_min"])
        if a.basic_ingest:
            self.add("IoT Core", "messaging (Basic Ingest: none)", f"{msgs / 1e6:,.1f} M msgs", 0.0)
        else:
            self.add("IoT Core", "messaging", f"{msg_units / 1e6:,.1f} M x 5 KB units",
                     iot_messaging_cost(msg_units))
        self.add("IoT Core", "rules triggered", f"{msg_units / 1e6:,.1f} M",
                 msg_units / 1e6 * p["iot_rule_per_million"])
        self.add("IoT Core", "actions executed (Lambda)", f"{msg_units / 1e6:,.1f} M",
                 msg_units / 1e6 * p["iot_action_per_million"])

        # --- Lambda: ingest (one async invocation per MQTT message)
        req, dur = self.lambda_cost(msgs, a.ingest_ms, a.ingest_mb)
        self.add("Lambda", "ingest requests", f"{msgs / 1e6:,.1f} M", req)
        self.add("Lambda", f"ingest compute ({a.arch})",
                 f"{a.ingest_ms:g} ms x {a.ingest_mb} MB", dur)

        # --- Lambda: transform (Firehose processor, transform_batch_mib / 60 s batches)
        fh_in_bytes = msgs * rec_bytes
        if msgs > 0:
            batches = max(fh_in_bytes / (a.transform_batch_mib * 1024 * KB), MINUTES_PER_MONTH)
            batch_mib = fh_in_bytes / (1024 * KB) / batches
        else:
            batches, batch_mib = 0.0, 0.0
        req, dur = self.lambda_cost(batches, max(1.0, a.transform_ms_per_mib * batch_mib), a.transform_mb)
        self.add("Lambda", "transform (Firehose processor)",
                 f"{batches / 1e3:,.1f} k batches", req + dur)

        # --- Lambda: rollup every 5 minutes, compact daily
        runs = HOURS_PER_MONTH * 12
        rollup_ms = a.rollup_base_ms + rows / runs * a.rollup_us_per_row / 1000
        req, dur = self.lambda_cost(runs, rollup_ms, a.rollup_mb)
        self.add("Lambda", "rollup (every 5 min)", f"{runs:,} runs x {rollup_ms / 1000:,.1f} s", req + dur)
        days = HOURS_PER_MONTH / 24
        compact_ms = a.compact_base_ms + rows / days * a.compact_us_per_row / 1000
        req, dur = self.lambda_cost(days, compact_ms, a.compact_mb)
        self.add("Lambda", "compact (daily)", f"{days:,.0f} runs x {compact_ms / 1000:,.0f} s", req + dur)

        # --- Kinesis Data Streams (none with --ingest-sink firehose: ingest PutRecordBatch
        # goes straight to a DirectPut Firehose stream)
        if a.ingest_sink == "firehose":
            pass
        elif a.kinesis_mode == "on-demand":
            self.add("Kinesis", "on-demand stream-hours", f"{HOURS_PER_MONTH} h",
                     HOURS_PER_MONTH * p["kds_od_stream_hour"])
            in_gb = msgs * math.ceil(rec_bytes / KB) * KB / GB
            self.add("Kinesis", "on-demand data in (1 KB records)", f"{in_gb:,.1f} GB",
                     in_gb * p["kds_od_ingest_gb"])
            self.add("Kinesis", "on-demand data out (Firehose)", f"{stream_gb:,.1f} GB",
                     stream_gb * p["kds_od_retrieval_gb"])
        else:
            self.add("Kinesis", "provisioned shard-hours", f"{a.shards} x {HOURS_PER_MONTH} h",
                     a.shards * HOURS_PER_MONTH * p["kds_shard_hour"])
            put_units = msgs * max(1, math.ceil(rec_bytes / (25 * KB)))
            self.add("Kinesis", "PUT payload units (25 KB)", f"{put_units / 1e6:,.1f} M",
                     put_units / 1e6 * p["kds_put_unit_per_million"])

        # --- Firehose
        fh_gb = msgs * units_5kb(rec_bytes) * 5 * KB / GB
        self.add("Firehose", "ingestion (5 KB records)", f"{fh_gb:,.1f} GB", fh_gb * p["fh_ingest_gb"])
        self.add("Firehose", "format conversion (Parquet)", f"{fh_gb:,.1f} GB",
                 fh_gb * p["fh_format_conversion_gb"])
        dp_gb = rows * a.row_json_bytes / GB
        self.add("Firehose", "dynamic partitioning (GB)", f"{dp_gb:,.1f} GB", dp_gb * p["fh_dp_gb"])
        parquet_gb = rows * a.parquet_bytes_per_row / GB
        objects = 0.0
        if msgs > 0:
            objects = max(HOURS_PER_MONTH * a.firehose_flushes_per_hour, parquet_gb * 1024 / 128)
        self.add("Firehose", "dynamic partitioning (objects)", f"{objects:,.0f} objects",
                 objects / 1000 * p["fh_dp_per_1000_objects"])

        # --- S3
        stats_rows = a.devices * a.metrics * MINUTES_PER_MONTH if msgs > 0 else 0
        stats_gb = stats_rows * a.stats_bytes_per_row / GB
        puts = objects + runs * 2 + days * 10  # Firehose objects, rollup stats + checkpoint, compaction
        gets = runs * 3 + days * (objects / days if days else 0)
        self.add("S3", "requests (PUT/GET)", f"{puts / 1e3:,.1f} k PUT, {gets / 1e3:,.1f} k GET",
                 puts / 1000 * p["s3_put_per_1000"] + gets / 1000 * p["s3_get_per_1000"])
        self.add("S3", "storage added per month", f"{parquet_gb + stats_gb:,.1f} GB (grows monthly)",
                 (parquet_gb + stats_gb) * p["s3_gb_month"])

        # --- CloudWatch
        log_gb = (msgs * a.ingest_log_bytes + (batches + runs + days) * a.job_log_bytes) / GB
        stored = log_gb * min(1.0, a.log_days_stored / 30)
        self.add("CloudWatch", "Logs ingestion + storage", f"{log_gb:,.2f} GB",
                 log_gb * p["cw_logs_ingest_gb"] + stored * p["cw_logs_store_gb_month"])
        self.add("CloudWatch", "alarms", f"{self.alarms} alarms", self.alarms * p["cw_alarm_month"])

        # --- Scheduler, KMS
        sched = runs + days
        self.add("Scheduler", "schedule invocations", f"{sched:,.0f}", sched / 1e6 * p["scheduler_per_million"])
        if a.ingest_sink == "kinesis":
            kms = a.kms_callers * 12 * HOURS_PER_MONTH
            self.add("KMS", "stream SSE requests (aws/kinesis)", f"{kms / 1e3:,.1f} k",
                     kms / 1e4 * p["kms_per_10k_requests"])
        return self


def money(x: float) -> str:
    return f"${x:,.2f}"


def render(est: Estimate, idle: Estimate, a: argparse.Namespace, out=sys.stdout) -> None:
    msgs = a.devices * a.rate * SECONDS_PER_MONTH
    w = out.write
    w(f"Estimated monthly bill, us-east-1 list prices as of {PRICES_AS_OF} (no free tier)\n")
    w(f"Fleet: {a.devices:,} devices x {a.rate:g} msg/s = {a.devices * a.rate:,.1f} msg/s, "
      f"{msgs / 1e6:,.1f} M messages/month of {a.payload_bytes} B with {a.metrics} readings each\n")
    sink = (f"ingest -> Kinesis {a.kinesis_mode}"
            + (f" ({a.shards} shard{'s' if a.shards != 1 else ''})" if a.kinesis_mode == "provisioned" else "")
            if a.ingest_sink == "kinesis" else "ingest -> Firehose DirectPut (no Kinesis stream)")
    w(f"Lambda {a.arch}; {sink}"
      + f"; devices publish to {'Basic Ingest ($aws/rules/...)' if a.basic_ingest else 'dt/<fleet>/<device>/telemetry'}\n\n")
    c1 = max(len(f"{r[0]} {r[1]}") for r in est.rows) + 2
    c2 = max(len(r[2]) for r in est.rows) + 2
    w(f"{'component':<{c1}}{'usage':<{c2}}{'USD/month':>12}\n")
    w(f"{'-' * (c1 + c2 + 12)}\n")
    for service, item, usage, usd in est.rows:
        w(f"{service + ' ' + item:<{c1}}{usage:<{c2}}{money(usd):>12}\n")
    w(f"{'-' * (c1 + c2 + 12)}\n")
    w(f"{'TOTAL per month':<{c1 + c2}}{money(est.total):>12}\n")
    w(f"{'IDLE per month (0 devices, stack deployed)':<{c1 + c2}}{money(idle.total):>12}\n")
    idle_top = sorted((r for r in idle.rows if r[3] >= 0.005), key=lambda r: -r[3])
    w("  idle = " + " + ".join(f"{r[0]} {r[1]} {money(r[3])}" for r in idle_top) + "\n")

    # Levers that DESIGN.md asks the estimator to show.
    if msgs > 0:
        w("\nAlternatives (same fleet):\n")
    if msgs > 0 and not a.basic_ingest:
        saved = sum(r[3] for r in est.rows if r[0] == "IoT Core" and r[1] == "messaging")
        w(f"  devices publish to Basic Ingest ($aws/rules/<rule>/dt/...): no messaging charge, "
          f"-{money(saved)}\n")
    ingest_req = sum(r[3] for r in est.rows if r[1] == "ingest requests")
    ingest_dur = sum(r[3] for r in est.rows if r[1].startswith("ingest compute"))
    if msgs > 0:
        b = a.esm_batch
        esm_lambda = ingest_req / b + ingest_dur * (a.ingest_ms + b * 0.5) / (a.ingest_ms * b)
        raw_stream = (HOURS_PER_MONTH * PRICES["kds_od_stream_hour"]
                      + msgs * math.ceil((a.payload_bytes + 200) / KB) * KB / GB * PRICES["kds_od_ingest_gb"]
                      + msgs * (a.payload_bytes + 200) / GB * PRICES["kds_od_retrieval_gb"])
        delta = (esm_lambda + raw_stream) - (ingest_req + ingest_dur)
        w(f"  IoT rule -> raw Kinesis stream -> ingest in batches of {b} (event-source mapping): "
          f"ingest Lambda {money(ingest_req + ingest_dur)} -> {money(esm_lambda)}, plus a raw on-demand "
          f"stream {money(raw_stream)}: net {'+' if delta >= 0 else '-'}{money(abs(delta))}\n")
    if msgs > 0 and a.ingest_sink == "kinesis":
        saved = sum(r[3] for r in est.rows if r[0] in ("Kinesis", "KMS"))
        w(f"  --ingest-sink firehose (PutRecordBatch to a DirectPut Firehose stream, no Kinesis stream; "
          f"no per-device order or replay): -{money(saved)}\n")
    if msgs > 0 and a.kinesis_mode == "on-demand" and a.ingest_sink == "kinesis":
        w(f"  --kinesis-mode provisioned ({a.shards} shard{'s' if a.shards != 1 else ''}): "
          f"stream {money(HOURS_PER_MONTH * PRICES['kds_shard_hour'] * a.shards)}/month idle instead of "
          f"{money(HOURS_PER_MONTH * PRICES['kds_od_stream_hour'])}\n")

    w("\nAssumptions (flags of infra/cost.py): ")
    w(f"ingest {a.ingest_ms:g} ms billed at {a.ingest_mb} MB per message; "
      f"transform {a.transform_ms_per_mib:g} ms per MiB in {a.transform_batch_mib:g} MiB batches at {a.transform_mb} MB; "
      f"rollup {a.rollup_base_ms:g} ms + {a.rollup_us_per_row:g} us/row at {a.rollup_mb} MB; "
      f"stream record = payload + {a.stream_overhead_bytes} B; "
      f"{a.row_json_bytes} B JSON and {a.parquet_bytes_per_row} B Parquet per reading; "
      f"ingest logs {a.ingest_log_bytes} B/invocation (platform REPORT lines off); "
      f"S3 storage is the data added in one month (it accumulates: month N stores N x that); "
      f"Athena queries, data transfer out and the free tier are not included. "
      f"Firehose bills each record as a multiple of 5 KB, Kinesis on-demand as a multiple of 1 KB.\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=0.2, help="messages per second per device")
    ap.add_argument("--payload-bytes", type=int, default=200)
    ap.add_argument("--arch", choices=["arm64", "x86_64"], default="arm64")
    ap.add_argument("--ingest-sink", choices=["kinesis", "firehose"], default="kinesis",
                    help="IngestSink of the template: Kinesis stream, or DirectPut Firehose (no stream)")
    ap.add_argument("--kinesis-mode", choices=["on-demand", "provisioned"], default="on-demand")
    ap.add_argument("--shards", type=int, default=0, help="provisioned shards (0 = sized from the rate)")
    ap.add_argument("--basic-ingest", action="store_true", help="devices publish to $aws/rules/<rule>/...")
    ap.add_argument("--template", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "template.yaml"),
                    help="template whose AWS::CloudWatch::Alarm resources are counted")
    for k, v in DEFAULTS.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v, help=f"assumption (default {v})")
    a = ap.parse_args(argv)
    if a.devices < 0 or a.rate < 0 or a.payload_bytes <= 0 or a.metrics <= 0:
        ap.error("--devices and --rate must be >= 0, --payload-bytes and --metrics > 0")
    if a.payload_bytes > 128 * KB:
        ap.error("--payload-bytes above the 128 KiB IoT Core message limit")
    if a.shards <= 0:
        rec_bytes = a.payload_bytes + a.stream_overhead_bytes
        per_s = a.devices * a.rate
        a.shards = max(1, math.ceil(per_s / 1000), math.ceil(per_s * rec_bytes / (1024 * KB)))
    return a


def count_alarms(template: str) -> int:
    try:
        sys.dont_write_bytecode = True  # no infra/__pycache__ in the work tree
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import tmpl  # noqa: PLC0415

        return sum(1 for _, t in tmpl.resources(tmpl.read_lines(template)) if t == "AWS::CloudWatch::Alarm")
    except OSError:
        return 14


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    alarms = count_alarms(a.template)
    if a.ingest_sink == "firehose":
        alarms -= 1  # StreamIteratorAgeAlarm has Condition: UseKinesisSink
    est = Estimate(a, alarms).compute()
    idle_args = argparse.Namespace(**{**vars(a), "devices": 0, "shards": 1 if a.kinesis_mode == "provisioned" else a.shards})
    idle = Estimate(idle_args, alarms).compute()
    render(est, idle, a)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
