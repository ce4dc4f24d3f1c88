#!/usr/bin/env python3
"""Render infra/template.yaml as plain CloudFormation that moto's CloudFormation can deploy.

Used by infra/smoke-moto.sh, the smoke deploy of infra/deploy.sh and infra/destroy.sh against
a moto server. Runs with the python of the sam venv (.test-env/sam: aws-sam-translator and
aws-sam-cli's YAML loader); needs no network and no credentials.

    .test-env/sam/bin/python infra/moto_template.py infra/template.yaml OUT.json --moto-types TYPES

TYPES lists, one per line, the resource types moto's CloudFormation creates (infra/smoke-moto.sh
asks moto for them).

What it does, and why:

1. The SAM transform, offline. moto does not run `Transform: AWS::Serverless-2016-10-31`, so
   the template is translated here with samtranslator (the same library `sam validate` uses).
   The template uses explicit roles and no SAM policy templates, so the managed-policy loader
   is never needed: it is a stub that raises if the translator ever asks for it.
2. Function code stays a local path. Each `CodeUri: ../target/lambda/<bin>/bootstrap.zip`
   becomes the translated `AWS::Lambda::Function`'s `Code: ../target/lambda/<bin>/bootstrap.zip`,
   the convention infra/deploy.sh rewrites to its artifacts directory, so `aws cloudformation
   package` uploads the zips exactly as in a real deploy.
3. Resource types moto's CloudFormation does not create (not in TYPES), and the few in
   MOTO_BROKEN, are removed; every Ref, GetAtt or ${...} to them becomes a placeholder
   (moto-skipped-<LogicalId>, or an ARN-shaped string where an ARN is expected, since moto's
   IAM validates policy resources). Outputs that name a removed resource are dropped. The list of what was removed is printed
   on stderr, and the smoke test repeats it.
4. Parameters, conditions and every other resource stay as they are.

The output is JSON (CloudFormation reads JSON and YAML alike; JSON needs no tag handling).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

# samtranslator asks boto3 for a region to fill AWS::Region; never let it look further.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

# What removing each type means for the smoke test's coverage. Which types are removed is not
# decided here: it is every type the running moto's CloudFormation has no model for (the
# --moto-types list, printed by infra/smoke-moto.sh from moto itself). moto would otherwise
# log a warning, answer CREATE_COMPLETE without creating anything, and fail on the first
# GetAtt of it.
NOTES: dict[str, str] = {
    "AWS::KinesisFirehose::DeliveryStream": (
        "moto's Firehose is API-only; the Kinesis source, transform processor, Parquet "
        "conversion and dynamic partitioning exist only on AWS"
    ),
    "AWS::Glue::Database": "no Glue in moto's CloudFormation; the columns are checked by tests/tests/glue_schema.rs",
    "AWS::Glue::Table": "no Glue in moto's CloudFormation; the columns are checked by tests/tests/glue_schema.rs",
    "AWS::IoT::TopicRule": "the rule (SQL and Lambda / Firehose / Kinesis action per Topology, error action) is checked by cfn-lint and sam validate only",
    "AWS::Scheduler::Schedule": "the schedules are checked by cfn-lint and sam validate only",
    "AWS::Lambda::EventInvokeConfig": "async retries / max event age of ingest, rollup and compact are not exercised",
    "AWS::Logs::LogStream": "the Firehose delivery log stream",
    "AWS::CloudWatch::Alarm": "the alarms are checked by cfn-lint and checkov only",
    "AWS::S3::BucketPolicy": "the TLS-only bucket policy is checked by cfn-lint and checkov only",
    "AWS::SNS::Subscription": "the optional alarm e-mail subscription",
}

# Types moto has a model for but handles too wrongly to keep: removed all the same.
MOTO_BROKEN: dict[str, str] = {
    "AWS::IoT::Policy": (
        "moto 5.2.5 creates it, but its Ref is the Python object's repr instead of the policy "
        "name, and deleting the stack then fails on it; the policy document is checked by "
        "cfn-lint and checkov only"
    ),
}

PLACEHOLDER = "arn:aws:moto-skipped:us-east-1:123456789012:{}"
SUB_REF_RE = re.compile(r"\$\{([A-Za-z0-9]+)(\.[A-Za-z0-9.]+)?\}")
LOCAL_CODE = "../target/lambda/{}/bootstrap.zip"
CODE_URI_RE = re.compile(r"^\.\./target/lambda/([A-Za-z0-9_-]+)/bootstrap\.zip$")
DUMMY_BUCKET = "iotpipe-moto-template-placeholder"


class NoManagedPolicies:
    """The template names its roles; a SAM `Policies:` list would need the AWS managed policy
    map, which this offline renderer refuses to fetch."""

    def load(self) -> dict[str, str]:
        raise RuntimeError("the template asks for AWS managed policies; moto_template.py renders offline only")


def load_template(path: str) -> dict[str, Any]:
    from samcli.yamlhelper import yaml_parse  # aws-sam-cli's loader: knows !Ref, !Sub, ...

    with open(path, encoding="utf-8") as f:
        return yaml_parse(f.read())


def translate(sam: dict[str, Any]) -> dict[str, Any]:
    """The SAM transform with CodeUri kept as the local zip path."""
    from samtranslator.translator.transform import transform

    # samtranslator wants s3://bucket/key; remember which binary each function packages.
    binaries: dict[str, str] = {}
    for logical_id, res in sam.get("Resources", {}).items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        uri = res.get("Properties", {}).get("CodeUri", "")
        m = CODE_URI_RE.match(uri) if isinstance(uri, str) else None
        if not m:
            raise ValueError(f"{logical_id}: CodeUri {uri!r} is not ../target/lambda/<bin>/bootstrap.zip")
        binaries[logical_id] = m.group(1)
        res["Properties"]["CodeUri"] = f"s3://{DUMMY_BUCKET}/{m.group(1)}.zip"

    cfn = transform(sam, {}, NoManagedPolicies())
    for logical_id, binary in binaries.items():
        fn = cfn["Resources"][logical_id]
        assert fn["Type"] == "AWS::Lambda::Function", (logical_id, fn["Type"])
        fn["Properties"]["Code"] = LOCAL_CODE.format(binary)
    return cfn


def replace_refs(node: Any, removed: set[str]) -> Any:
    """Every reference to a removed resource becomes a placeholder string."""
    if isinstance(node, dict):
        if len(node) == 1:
            (key, value), = node.items()
            if key == "Ref" and value in removed:
                return f"moto-skipped-{value}"
            if key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) else str(value).split(".")[0]
                if target in removed:
                    return PLACEHOLDER.format(target)
            if key == "Fn::Sub":
                if isinstance(value, str):
                    return {key: sub_text(value, removed)}
                if isinstance(value, list) and value and isinstance(value[0], str):
                    return {key: [sub_text(value[0], removed)] + [replace_refs(v, removed) for v in value[1:]]}
        return {k: replace_refs(v, removed) for k, v in node.items()}
    if isinstance(node, list):
        return [replace_refs(v, removed) for v in node]
    return node


def sub_text(text: str, removed: set[str]) -> str:
    def one(m: re.Match[str]) -> str:
        return f"moto-skipped-{m.group(1)}" if m.group(1) in removed else m.group(0)

    return SUB_REF_RE.sub(one, text)


def mentions(node: Any, names: set[str]) -> bool:
    """Whether a (placeholder-substituted) node refers to one of the removed resources."""
    text = json.dumps(node)
    return any(f"moto-skipped-{n}" in text or PLACEHOLDER.format(n) in text for n in names)


def trim(cfn: dict[str, Any], moto_types: set[str]) -> tuple[dict[str, Any], list[tuple[str, str]], list[str]]:
    resources = cfn["Resources"]
    removed_pairs = [(lid, r["Type"]) for lid, r in resources.items() if r["Type"] not in moto_types or r["Type"] in MOTO_BROKEN]
    removed = {lid for lid, _ in removed_pairs}
    kept = {lid: r for lid, r in resources.items() if lid not in removed}
    out = dict(cfn)
    out["Resources"] = replace_refs(kept, removed)
    # A DependsOn on a removed resource would make the stack invalid.
    for res in out["Resources"].values():
        dep = res.get("DependsOn")
        if isinstance(dep, str) and dep in removed:
            del res["DependsOn"]
        elif isinstance(dep, list):
            res["DependsOn"] = [d for d in dep if d not in removed]
            if not res["DependsOn"]:
                del res["DependsOn"]
    dropped_outputs = []
    outputs = {}
    for name, o in cfn.get("Outputs", {}).items():
        o2 = replace_refs(o, removed)
        if mentions(o2, removed):
            dropped_outputs.append(name)
        else:
            outputs[name] = o2
    out["Outputs"] = outputs
    out["Description"] = "iot-pipeline, SAM-translated and trimmed for moto (infra/moto_template.py)"
    return out, removed_pairs, dropped_outputs


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[3] != "--moto-types":
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[4], encoding="utf-8") as f:
        moto_types = {line.strip() for line in f if line.strip()}
    if not moto_types:
        print(f"error: {argv[4]} lists no resource type", file=sys.stderr)
        return 2
    cfn = translate(load_template(argv[1]))
    out, removed, dropped = trim(cfn, moto_types)
    with open(argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, sort_keys=False)
        f.write("\n")
    by_type: dict[str, list[str]] = {}
    for lid, rtype in removed:
        by_type.setdefault(rtype, []).append(lid)
    print(f"moto template: {len(out['Resources'])} resources kept, {len(removed)} removed", file=sys.stderr)
    for rtype, ids in by_type.items():
        if rtype in MOTO_BROKEN:
            why = MOTO_BROKEN[rtype]
        else:
            why = "no moto model; " + NOTES.get(rtype, "not exercised by the smoke deploy")
        print(f"  removed {rtype} ({', '.join(ids)}): {why}", file=sys.stderr)
    if dropped:
        print(f"  outputs dropped (they name a removed resource): {', '.join(dropped)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
