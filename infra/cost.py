#!/usr/bin/env python3
"""Monthly AWS bill of a fleet, per topology (stdlib only, no network).

Called by `infra/deploy.sh --dry-run`; runnable alone:

  python3 infra/cost.py --devices 1000 --rate 0.2 --topology all
  python3 infra/cost.py --devices 1000 --rate 0.2 --batch 10 --format json

It is the same model as `iotpipe cost` (iotpipe/src/fleet_cost.rs), line for line, and
prints the same figures for the same fleet (iotpipe/tests/cost_cli.rs checks it). Both read:
  * infra/prices.toml         - every price, with its source page and the date read, and
                                the usage assumptions (ms per invocation, bytes per row, ...);
  * telemetry/src/metering.rs - the metering units (5 KB IoT/Firehose, 1 KB Kinesis) and the
                                functions' memory sizes (held to the template by a test).
No free tier is applied. Data transfer is zero: MQTT ingress is free and everything stays
in-region.

Topologies: firehose (the default of DESIGN.md: Basic Ingest -> rule -> Firehose DirectPut ->
transform validates and quarantines), kinesis (rule -> Kinesis -> ingest in event-source
batches -> Firehose), per-message (one ingest invocation per message -> Kinesis -> Firehose;
what infra/template.yaml deploys until it has a Topology parameter).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tomllib

INFRA = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(INFRA)
PRICES_TOML = os.path.join(INFRA, "prices.toml")
METERING_RS = os.path.join(ROOT, "telemetry", "src", "metering.rs")
ROLLUP_CONFIG_RS = os.path.join(ROOT, "analytics", "src", "config.rs")
TOPOLOGIES = ("firehose", "kinesis", "per-message")  # the default first
IOT_MAX_PAYLOAD_BYTES = 128 * 1024  # AWS IoT Core message limit
KIB, MIB, GIB = 1024.0, 1024.0**2, 1024.0**3


def load_prices(path: str = PRICES_TOML) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def load_metering(path: str = METERING_RS) -> dict:
    """The unit constants and each function's memory_mb, read from telemetry's Rust source
    (where they are defined once)."""
    with open(path, encoding="utf-8") as f:
        src = f.read()
    out: dict = {}
    for name, expr in re.findall(r"pub const ([A-Z_]+_BYTES): usize = ([0-9 *]+);", src):
        out[name] = math.prod(int(x) for x in expr.split("*"))
    for name, value in re.findall(r"pub const (INGEST_BATCH_[A-Z_]+): (?:usize|u64) = (\d+);", src):
        out[name] = int(value)
    for name, mb in re.findall(r'name: "([a-z]+)",\s*memory_mb: (\d+),', src):
        out[name + "_mb"] = int(mb)
    # The rollup's units per hour (analytics::config::DEFAULT_BUCKETS): every unit reads
    # every object of its hour.
    with open(ROLLUP_CONFIG_RS, encoding="utf-8") as f:
        m = re.search(r"pub const DEFAULT_BUCKETS: u32 = (\d+);", f.read())
    if m:
        out["rollup_buckets"] = int(m.group(1))
    need = ["rollup_buckets", "IOT_MESSAGE_UNIT_BYTES", "FIREHOSE_INGEST_UNIT_BYTES", "KINESIS_ON_DEMAND_UNIT_BYTES",
            "ingest_mb", "transform_mb", "rollup_mb", "compact_mb", "INGEST_BATCH_SIZE",
            "INGEST_BATCH_WINDOW_SECONDS", "report_mb"]
    missing = [k for k in need if k not in out]
    if missing:
        sys.exit(f"cost.py: {path} no longer defines {missing} in the form this script reads; "
                 "update load_metering()")
    return out


def count_alarms(template: str) -> int:
    with open(template, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip() == "Type: AWS::CloudWatch::Alarm")


def units(nbytes: float, unit: int) -> float:
    return float(max(1, math.ceil(max(0.0, nbytes) / unit)))


def tiered(tiers: list, quantity: float) -> float:
    usd, left = 0.0, quantity
    for size, per_million in tiers:
        if left <= 0:
            break
        take = min(left, size)
        usd += take / 1e6 * per_million
        left -= take
    return usd


def publish_bytes(a: argparse.Namespace) -> int:
    return a.payload_bytes if a.batch <= 1 else a.batch * a.payload_bytes + a.batch + 1


def buffer_interval(asm: dict, freshness_s: float) -> float:
    """Mirrors fleet_cost::buffer_interval: the Firehose S3 buffer interval that delivers
    readings to the 1m stats within freshness_s (p99); ValueError when none can."""
    fixed = asm["processor_buffer_s"] + asm["freshness_overhead_s"]
    shortest = fixed + asm["partitioning_delay_factor"] * asm["firehose_buffer_min_s"]
    if not (math.isfinite(freshness_s) and freshness_s >= shortest):
        raise ValueError(f"--freshness {freshness_s:g} is below the shortest the design allows, {shortest:g} s: "
                         f"ask for at least {shortest:g}")
    return min((freshness_s - fixed) / asm["partitioning_delay_factor"], asm["firehose_buffer_max_s"])


def bill_lines(pt: dict, met: dict, alarms: int, a: argparse.Namespace, topology: str) -> list[dict]:
    """Mirrors fleet_cost::bill_lines: same lines, same order, same arithmetic."""
    pr, asm = pt["prices"], pt["assumptions"]
    lines: list[dict] = []

    def add(component: str, usage: str, usd: float) -> None:
        lines.append({"component": component, "usage": usage, "usd": usd})

    def lam(invocations: float, ms: float, fn: str) -> tuple[float, float]:
        gb_s = invocations * math.ceil(ms) / 1000.0 * met[fn + "_mb"] / 1024.0
        return (invocations / 1e6 * pr["lambda_requests"]["usd"],
                gb_s * pr["lambda_gb_second_" + a.arch]["usd"])

    hours = asm["hours_per_month"]
    minutes, seconds = hours * 60.0, hours * 3600.0
    devices, k = float(a.devices), float(a.batch)
    msgs = devices * a.rate * seconds
    publishes = msgs / k
    pub_bytes = float(publish_bytes(a))
    rows = msgs * a.metrics
    rec_bytes = a.payload_bytes + asm["stream_overhead_bytes"]
    iot_units = publishes * units(pub_bytes, met["IOT_MESSAGE_UNIT_BYTES"])
    # Topology kinesis: records per ingest invocation. The event-source mapping invokes per
    # shard once BatchSize records are there or its window has passed, whichever is first.
    esm_batch = min(max(publishes / seconds / asm["kinesis_shards"]
                        * met["INGEST_BATCH_WINDOW_SECONDS"], 1.0), float(met["INGEST_BATCH_SIZE"]))

    add("IoT Core connectivity", f"{a.devices} devices x {minutes:.0f} min",
        devices * minutes / 1e6 * pr["iot_connectivity"]["usd"])
    if topology == "per-message":
        add("IoT Core messaging", f"{iot_units / 1e6:.1f} M x 5 KB units",
            tiered(pr["iot_messaging"]["tiers"], iot_units))
    else:
        add("IoT Core messaging", f"{publishes / 1e6:.1f} M publishes to Basic Ingest: not charged", 0.0)
    add("IoT Core rules triggered", f"{iot_units / 1e6:.1f} M x 5 KB units",
        iot_units / 1e6 * pr["iot_rule_triggered"]["usd"])
    action = {"firehose": "Firehose", "kinesis": "Kinesis", "per-message": "Lambda"}[topology]
    add(f"IoT Core actions executed ({action})", f"{iot_units / 1e6:.1f} M x 5 KB units",
        iot_units / 1e6 * pr["iot_action_executed"]["usd"])

    def ingest_ms(messages: float) -> float:
        return asm["ingest_ms"] + max(0.0, messages - 1.0) * asm["ingest_us_per_message"] / 1000.0

    if topology == "firehose":
        ingest_inv, ms = 0.0, 0.0
    elif topology == "kinesis":
        ingest_inv, ms = publishes / esm_batch, ingest_ms(esm_batch * k)
    else:
        ingest_inv, ms = publishes, ingest_ms(k)
    if topology != "firehose":
        req, comp = lam(ingest_inv, ms, "ingest")
        how = f" (batches of {esm_batch:.0f})" if topology == "kinesis" else ""
        add("Lambda ingest requests", f"{ingest_inv / 1e6:.2f} M invocations{how}", req)
        add(f"Lambda ingest compute ({a.arch})", f"{math.ceil(ms):.0f} ms billed x {met['ingest_mb']} MB", comp)

    if topology == "kinesis":
        kin_records, kin_bytes = publishes, pub_bytes
    elif topology == "per-message":
        kin_records, kin_bytes = msgs, rec_bytes
    else:
        kin_records, kin_bytes = 0.0, 0.0
    if topology != "firehose":
        add("Kinesis on-demand stream-hours", f"{hours:.0f} h", hours * pr["kinesis_on_demand_stream_hour"]["usd"])
        in_gb = kin_records * units(kin_bytes, met["KINESIS_ON_DEMAND_UNIT_BYTES"]) * KIB / GIB
        add("Kinesis data in (1 KB records)", f"{in_gb:.1f} GB", in_gb * pr["kinesis_on_demand_ingest"]["usd"])
        out_gb = kin_records * kin_bytes / GIB
        add("Kinesis data out", f"{out_gb:.1f} GB", out_gb * pr["kinesis_on_demand_retrieval"]["usd"])

    if topology == "firehose":
        fh_records, fh_bytes = publishes, pub_bytes
    elif topology == "kinesis":
        fh_records, fh_bytes = publishes, k * rec_bytes
    else:
        fh_records, fh_bytes = msgs, rec_bytes
    fh_unit = met["FIREHOSE_INGEST_UNIT_BYTES"]
    fh_gb = fh_records * units(fh_bytes, fh_unit) * fh_unit / GIB
    add("Firehose ingestion (5 KB records)", f"{fh_records / 1e6:.1f} M records, {fh_gb:.1f} GB",
        fh_gb * pr["firehose_ingest"]["usd"])
    add("Firehose format conversion (Parquet)", f"{fh_gb:.1f} GB", fh_gb * pr["firehose_format_conversion"]["usd"])
    dp_gb = rows * asm["row_json_bytes"] / GIB
    add("Firehose dynamic partitioning (GB)", f"{dp_gb:.1f} GB", dp_gb * pr["firehose_partitioning"]["usd"])
    parquet_gb = rows * asm["parquet_bytes_per_row"] / GIB
    try:
        buffer_s = buffer_interval(asm, a.freshness)
    except ValueError:
        buffer_s = asm["firehose_buffer_min_s"]
    filled = 1.0 - math.exp(-(publishes / seconds) * buffer_s)
    objects = max(hours * 3600.0 / buffer_s * filled, parquet_gb * 1024.0 / 128.0) if msgs > 0 else 0.0
    add("Firehose dynamic partitioning (objects)", f"{objects:.0f} objects",
        objects / 1000.0 * pr["firehose_partitioning_objects"]["usd"])

    fh_in_bytes = fh_records * fh_bytes
    if msgs > 0:
        batches = max(fh_in_bytes / (asm["transform_batch_mib"] * MIB), seconds / max(asm["processor_buffer_s"], 1.0))
        batch_mib = fh_in_bytes / MIB / batches
    else:
        batches, batch_mib = 0.0, 0.0
    req, comp = lam(batches, max(asm["transform_ms_per_mib"] * batch_mib, 1.0), "transform")
    add("Lambda transform (Firehose processor)", f"{batches / 1e3:.1f} k batches", req + comp)
    buckets = float(met["rollup_buckets"])
    event_runs = objects
    event_ms = asm["rollup_base_ms"] + rows / hours / 2.0 * asm["rollup_us_per_row"] / 1000.0
    req, comp = lam(event_runs, event_ms, "rollup")
    add("Lambda rollup (on new objects)", f"{event_runs:.0f} runs x {event_ms / 1000.0:.1f} s (buffer {buffer_s:.0f} s)",
        req + comp)
    runs = hours * 12.0
    req, comp = lam(runs, asm["rollup_base_ms"], "rollup")
    add("Lambda rollup (every 5 min, backstop)", f"{runs:.0f} runs x {asm['rollup_base_ms'] / 1000.0:.1f} s", req + comp)
    # The dashboard: re-rendered every 5 minutes, whatever the fleet.
    req, comp = lam(runs, asm["report_ms"], "report")
    add("Lambda report (dashboard, every 5 min)", f"{runs:.0f} runs x {asm['report_ms'] / 1000.0:.1f} s", req + comp)
    days = hours / 24.0
    compact_ms = asm["compact_base_ms"] + rows / days * asm["compact_us_per_row"] / 1000.0
    req, comp = lam(days, compact_ms, "compact")
    add("Lambda compact (daily)", f"{days:.0f} runs x {compact_ms / 1000.0:.0f} s", req + comp)

    objects_per_hour = objects / hours
    puts = objects * 2.0 + event_runs * 2.0 * buckets + runs + days * 10.0
    gets = event_runs * buckets * max(objects_per_hour / 2.0, 1.0) + runs + objects
    add("S3 requests (PUT/GET)", f"{puts / 1e3:.1f} k PUT, {gets / 1e3:.1f} k GET",
        puts / 1000.0 * pr["s3_put"]["usd"] + gets / 1000.0 * pr["s3_get"]["usd"])
    stats_rows = devices * a.metrics * minutes if msgs > 0 else 0.0
    stored_gb = parquet_gb + stats_rows * asm["stats_bytes_per_row"] / GIB
    add("S3 storage added per month", f"{stored_gb:.1f} GB (accumulates)", stored_gb * pr["s3_storage"]["usd"])

    log_gb = (ingest_inv * asm["ingest_log_bytes"] + (batches + event_runs + 2.0 * runs + days) * asm["job_log_bytes"]) / GIB
    kept_gb = log_gb * min(asm["log_days_stored"] / 30.0, 1.0)
    add("CloudWatch Logs ingestion + storage", f"{log_gb:.2f} GB",
        log_gb * pr["cloudwatch_logs_ingest"]["usd"] + kept_gb * pr["cloudwatch_logs_storage"]["usd"])
    add("CloudWatch alarms", f"{alarms} alarms", alarms * pr["cloudwatch_alarm"]["usd"])
    # The rollup's backstop and the report (every 5 minutes each), the daily compact.
    schedules = 2.0 * runs + days
    add("EventBridge Scheduler", f"{schedules:.0f} invocations", schedules / 1e6 * pr["scheduler"]["usd"])
    sqs = objects * asm["sqs_requests_per_object"]
    add("SQS (new-object queue)", f"{sqs / 1e3:.1f} k requests", sqs / 1e6 * pr["sqs_requests"]["usd"])
    if topology != "firehose":
        kms = asm["kms_callers"] * 12.0 * hours
        add("KMS (stream encryption)", f"{kms / 1e3:.1f} k requests", kms / 1e4 * pr["kms_requests"]["usd"])
    return lines


def bill(pt: dict, met: dict, alarms: int, a: argparse.Namespace, topology: str) -> dict:
    lines = bill_lines(pt, met, alarms, a, topology)
    idle = bill_lines(pt, met, alarms, argparse.Namespace(**{**vars(a), "devices": 0}), topology)
    return {"topology": topology, "default": topology == TOPOLOGIES[0],
            "monthly_usd": sum(x["usd"] for x in lines), "idle_usd": sum(x["usd"] for x in idle),
            "lines": lines}


def money(usd: float) -> str:
    return f"${usd:,.2f}"


def read_on(pt: dict) -> str:
    return min(p["read_on"] for p in pt["prices"].values())


def render(bills: list[dict], pt: dict, a: argparse.Namespace, out=sys.stdout) -> None:
    w = out.write
    msgs = a.devices * a.rate * pt["assumptions"]["hours_per_month"] * 3600.0
    w(f"Estimated monthly bill, {pt['region']} list prices read on {read_on(pt)} (infra/prices.toml), no free tier\n")
    w(f"Fleet: {a.devices} devices x {a.rate:g} msg/s, {msgs / 1e6:.1f} M messages/month of {a.payload_bytes} B "
      f"with {a.metrics} readings, {a.batch} per publish ({publish_bytes(a)} B)\n")
    w(f"Freshness: {a.freshness:g} s p99 to the 1m stats (FirehoseBufferIntervalSeconds "
      f"{buffer_interval(pt['assumptions'], a.freshness):.0f})\n")
    for b in bills:
        rows = [(x["component"], x["usage"], money(x["usd"])) for x in b["lines"]]
        c1 = max(len("IDLE per month (stack deployed, no device)"), *(len(r[0]) for r in rows))
        c2 = max(len(r[1]) for r in rows)
        c3 = max(len("USD/month"), *(len(r[2]) for r in rows), len(money(b["monthly_usd"])))
        default = " (the default: template.yaml's Topology parameter)" if b["default"] else ""
        w(f"\nTopology {b['topology']}{default}:\n")
        w(f"  {'component':<{c1}}  {'usage':<{c2}}  {'USD/month':>{c3}}\n")
        rule = f"  {'-' * c1}  {'-' * c2}  {'-' * c3}\n"
        w(rule)
        for r in rows:
            w(f"  {r[0]:<{c1}}  {r[1]:<{c2}}  {r[2]:>{c3}}\n")
        w(rule)
        w(f"  {'TOTAL per month':<{c1}}  {'':<{c2}}  {money(b['monthly_usd']):>{c3}}\n")
        w(f"  {'IDLE per month (stack deployed, no device)':<{c1}}  {'':<{c2}}  {money(b['idle_usd']):>{c3}}\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000, help="devices, each connected all month")
    ap.add_argument("--rate", type=float, default=0.2, help="messages per second per device")
    ap.add_argument("--payload-bytes", type=int, default=200, help="bytes of one message")
    ap.add_argument("--batch", type=int, default=1, help="messages per publish (device-side JSON array)")
    ap.add_argument("--metrics", type=int, default=3, help="readings per message")
    ap.add_argument("--topology", choices=[*TOPOLOGIES, "all"], default=TOPOLOGIES[0],
                    help="topology to price (default: firehose, the default topology)")
    ap.add_argument("--arch", choices=["arm64", "x86_64"], default="arm64")
    ap.add_argument("--freshness", type=float, default=None,
                    help="target seconds (p99) from arrival to the 1m stats; sets Firehose's buffer interval "
                         "(default: freshness_s of infra/prices.toml, the template's 120)")
    ap.add_argument("--format", choices=["table", "json"], default="table")
    ap.add_argument("--template", default=os.path.join(INFRA, "template.yaml"),
                    help="template whose AWS::CloudWatch::Alarm resources are counted")
    ap.add_argument("--prices", default=PRICES_TOML, help="price table (default: infra/prices.toml)")
    ap.add_argument("--print-metering", action="store_true",
                    help="print the units and memory sizes read from telemetry/src/metering.rs as JSON")
    a = ap.parse_args(argv)
    if a.devices < 0 or not (a.rate >= 0) or a.payload_bytes <= 0 or a.metrics <= 0 or a.batch <= 0:
        ap.error("--devices and --rate must be >= 0; --payload-bytes, --batch and --metrics > 0")
    if publish_bytes(a) > IOT_MAX_PAYLOAD_BYTES:
        ap.error(f"a publish of {a.batch} x {a.payload_bytes} B is {publish_bytes(a)} B, above the 128 KiB "
                 f"IoT Core limit: use a --batch of at most {max(1, (IOT_MAX_PAYLOAD_BYTES - 1) // (a.payload_bytes + 1))}")
    return a


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    met = load_metering()
    if a.print_metering:
        print(json.dumps(met, sort_keys=True))
        return 0
    pt = load_prices(a.prices)
    if a.freshness is None:
        a.freshness = float(pt["assumptions"]["freshness_s"])
    try:
        buffer_interval(pt["assumptions"], a.freshness)
    except ValueError as e:
        print(f"cost.py: {e}", file=sys.stderr)
        return 2
    alarms = count_alarms(a.template)
    shown = TOPOLOGIES if a.topology == "all" else (a.topology,)
    bills = [bill(pt, met, alarms, a, t) for t in shown]
    if a.format == "json":
        print(json.dumps(bills, indent=2))
    else:
        render(bills, pt, a)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
