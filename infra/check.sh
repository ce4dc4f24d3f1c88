#!/usr/bin/env bash
# Offline checks of the AWS side of iot-pipeline, run by the test suite (tests/run.sh).
#
#   bash infra/check.sh
#
# Creates its own virtualenvs under .test-env/ (one per tool set: cfn-lint, checkov and
# aws-sam-cli pin conflicting dependencies when installed together), installs each only
# when missing, then runs:
#   cfn-lint, checkov (--skip-download), sam validate --lint, the deploy script's dry run,
#   the destroy/provision scripts' --help and dry run, shellcheck (when installable),
#   and the Glue column lists' format (one column per line, the form the schema test parses).
# None of these reaches AWS or any network other than the package registries at install
# time. Exits non-zero when any check fails; the last line is "N passed, M failed".
#
# Environment:
#   CHECK_PYTHON     python used to create the venvs (default: python3)
#   CHECK_NO_INSTALL=1  never install; a missing tool is a failed check
#   CHECK_SKIP_SAM=1    skip sam validate (the slowest install)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

ENV_DIR="$ROOT/.test-env"
PY="${CHECK_PYTHON:-python3}"
TEMPLATE="infra/template.yaml"

# Pinned so that a re-run finds what it installed and CI sees the same rules as a developer.
CFN_LINT_SPEC="cfn-lint==1.58.0"
CHECKOV_SPEC="checkov==3.3.30"
SAM_SPEC="aws-sam-cli==1.170.0"

PASSED=0
FAILED=0
FAILED_NAMES=()
START_ALL=$SECONDS

header() { printf '\n==> %s\n' "$*"; }

# Tools must never reach AWS: dummy credentials, a fixed region, no metadata service,
# no telemetry.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE
export SAM_CLI_TELEMETRY=0 SAM_CLI_CONTAINER_CONNECTION_TIMEOUT=1
export BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONWARNINGS=ignore

# offline CMD... — runs CMD in a network namespace with no interface but loopback when this
# machine allows it (root, util-linux unshare), which proves the linters reach no network.
if unshare -n true >/dev/null 2>&1; then
    OFFLINE=(unshare -n)
    OFFLINE_NOTE="network namespace without network (unshare -n)"
else
    OFFLINE=()
    OFFLINE_NOTE="unshare -n unavailable; relying on --skip-download and dummy credentials"
fi
offline() { "${OFFLINE[@]}" "$@"; }

# run_check NAME CMD... — runs CMD, captures its output, prints it on failure
# (and a short tail on success), counts the result.
run_check() {
    local name="$1"
    shift
    header "$name"
    local t0=$SECONDS out rc
    out="$("$@" 2>&1)"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        if [ -n "$out" ]; then printf '%s\n' "$out" | tail -n 15; fi
        printf 'ok: %s (%ss)\n' "$name" "$((SECONDS - t0))"
        PASSED=$((PASSED + 1))
    else
        printf '%s\n' "$out"
        printf 'FAILED: %s (exit %s, %ss)\n' "$name" "$rc" "$((SECONDS - t0))"
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("$name")
    fi
}

# ensure_venv DIR SPEC BIN — creates DIR with SPEC installed unless DIR/bin/BIN exists and
# the recorded spec matches.
ensure_venv() {
    local dir="$1" spec="$2" bin="$3"
    if [ -x "$dir/bin/$bin" ] && [ "$(cat "$dir/.spec" 2>/dev/null)" = "$spec" ]; then
        echo "$bin: present in ${dir#"$ROOT"/} ($spec)"
        return 0
    fi
    if [ "${CHECK_NO_INSTALL:-0}" = 1 ]; then
        echo "$bin missing from $dir and CHECK_NO_INSTALL=1" >&2
        return 1
    fi
    echo "installing $spec into ${dir#"$ROOT"/}"
    rm -rf "$dir"
    "$PY" -m venv "$dir" || return 1
    "$dir/bin/python" -m pip install --quiet "$spec" || return 1
    [ -x "$dir/bin/$bin" ] || { echo "$bin not found after installing $spec" >&2; return 1; }
    echo "$spec" >"$dir/.spec"
}

ensure_shellcheck() {
    if command -v shellcheck >/dev/null 2>&1; then return 0; fi
    if [ "${CHECK_NO_INSTALL:-0}" = 1 ] || ! command -v apt-get >/dev/null 2>&1; then
        return 1
    fi
    if [ "$(id -u)" != 0 ]; then return 1; fi
    echo "installing shellcheck with apt-get"
    (apt-get install -y -qq shellcheck >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq shellcheck >/dev/null 2>&1; })
    command -v shellcheck >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------
mkdir -p "$ENV_DIR"

run_check "install cfn-lint" ensure_venv "$ENV_DIR/cfn-lint" "$CFN_LINT_SPEC" cfn-lint
run_check "install checkov" ensure_venv "$ENV_DIR/checkov" "$CHECKOV_SPEC" checkov
if [ "${CHECK_SKIP_SAM:-0}" != 1 ]; then
    run_check "install aws-sam-cli" ensure_venv "$ENV_DIR/sam" "$SAM_SPEC" sam
fi

run_check "template exists" test -s "$TEMPLATE"

echo "offline checks run in: $OFFLINE_NOTE"

run_check "cfn-lint $TEMPLATE" offline "$ENV_DIR/cfn-lint/bin/cfn-lint" "$TEMPLATE"

checkov_run() {
    # --quiet prints only failed checks; the summary line must show passes and no parse error
    # (checkov exits 0 on a template it could not parse).
    local out rc
    out="$(offline "$ENV_DIR/checkov/bin/checkov" --skip-download --framework cloudformation \
        -f "$TEMPLATE" --quiet --compact --output cli 2>&1)"
    rc=$?
    printf '%s\n' "$out"
    [ "$rc" -eq 0 ] || return "$rc"
    if ! printf '%s\n' "$out" | grep -Eq 'Passed checks: [1-9][0-9]*, Failed checks: 0,' ||
        printf '%s\n' "$out" | grep -Eq 'Parsing errors: [1-9]'; then
        echo "checkov: expected passed checks, no failure and no parsing error" >&2
        return 1
    fi
}
run_check "checkov --skip-download -f $TEMPLATE" checkov_run

if [ "${CHECK_SKIP_SAM:-0}" != 1 ]; then
    # sam validate --lint runs cfn-lint on the transformed template; without --lint it
    # calls the SAM translator locally. Neither needs the network; the dummy credentials
    # above keep botocore from looking for real ones.
    run_check "sam validate --lint" offline "$ENV_DIR/sam/bin/sam" validate --lint -t "$TEMPLATE" --region us-east-1
    run_check "sam validate (SAM translator)" offline "$ENV_DIR/sam/bin/sam" validate -t "$TEMPLATE" --region us-east-1
fi

glue_columns_format() {
    # Each Columns list in the template is preceded by the "generated:" comment and holds
    # one "- { Name: x, Type: y }" per line; the Rust schema test parses exactly that.
    "$PY" infra/tmpl.py check-glue "$TEMPLATE" || return 1
    # ...and the line reader agrees with a real YAML parse (cfn-lint's decoder).
    "$ENV_DIR/cfn-lint/bin/python" - "$TEMPLATE" <<'PY'
import sys
sys.dont_write_bytecode = True
sys.path.insert(0, "infra")
import tmpl
from cfnlint.decode import decode
doc, errors = decode(sys.argv[1])
assert not errors, errors
res = doc["Resources"]
lines = tmpl.read_lines(sys.argv[1])
assert tmpl.resources(lines) == [
    (k, v["Type"], v.get("Condition", "")) for k, v in res.items()
], "resource list differs from YAML"
by_name = {r["Properties"]["TableInput"]["Name"]: r for r in res.values() if r["Type"] == "AWS::Glue::Table"}
for table, cols in tmpl.glue_columns(lines).items():
    yaml_cols = [(c["Name"], c["Type"]) for c in by_name[table]["Properties"]["TableInput"]["StorageDescriptor"]["Columns"]]
    assert cols == yaml_cols, (table, cols, yaml_cols)
print("line reader agrees with the YAML parse (resources, glue columns)")
PY
}
run_check "glue column lists (telemetry, stats_*) parse (contents: tests/tests/glue_schema.rs)" glue_columns_format

dry_run() {
    local out
    out="$(offline bash infra/deploy.sh --dry-run --devices 1000 --rate 0.2 2>&1)" || { printf '%s\n' "$out"; return 1; }
    printf '%s\n' "$out"
    printf '%s\n' "$out" | grep -Eq '^ *TOTAL .*\$ *[0-9][0-9,]*\.[0-9]{2}' || {
        echo "dry run printed no TOTAL line" >&2
        return 1
    }
    printf '%s\n' "$out" | grep -Eq 'AWS::Kinesis::Stream' || {
        echo "dry run did not list the template's resources" >&2
        return 1
    }
}
run_check "deploy.sh --dry-run --devices 1000 --rate 0.2 (offline)" dry_run

dry_run_idle() {
    local out
    out="$(bash infra/deploy.sh --dry-run --devices 0 --kinesis-mode provisioned --arch x86_64 2>&1)" || { printf '%s\n' "$out"; return 1; }
    printf '%s\n' "$out" | grep -Eq '^ *TOTAL' || { printf '%s\n' "$out"; return 1; }
}
run_check "deploy.sh --dry-run --devices 0 --kinesis-mode provisioned --arch x86_64" dry_run_idle

dry_run_firehose_sink() {
    # IngestSink=firehose: the plan skips the stream (the bill prices topologies: see below).
    local out
    out="$(bash infra/deploy.sh --dry-run --ingest-sink firehose --devices 1000 --rate 0.2 2>&1)" || { printf '%s\n' "$out"; return 1; }
    printf '%s\n' "$out" | grep -Eq '^ *TOTAL' || { printf '%s\n' "$out"; return 1; }
    printf '%s\n' "$out" | grep -q 'IngestSink=firehose' || { echo "IngestSink=firehose not among the parameters"; return 1; }
    printf '%s\n' "$out" | grep -Eq 'TelemetryStream +AWS::Kinesis::Stream +\(skipped' || { echo "the stream is not marked skipped"; return 1; }
}
run_check "deploy.sh --dry-run --ingest-sink firehose (no Kinesis stream in the plan)" dry_run_firehose_sink

dry_run_topologies() {
    # Three bills; the firehose topology has no Kinesis, KMS or ingest Lambda line.
    local out firehose
    out="$(bash infra/deploy.sh --dry-run --topology all --devices 1000 --rate 0.2 2>&1)" || { printf '%s\n' "$out"; return 1; }
    [ "$(printf '%s\n' "$out" | grep -c '^ *TOTAL per month')" = 3 ] || { printf '%s\n' "$out"; echo "expected three TOTAL lines"; return 1; }
    firehose="$(printf '%s\n' "$out" | sed -n '/^Topology firehose/,/^ *IDLE/p')"
    if printf '%s\n' "$firehose" | grep -Eq '^ *(Kinesis|KMS|Lambda ingest)'; then echo "the firehose bill has Kinesis/KMS/ingest lines"; return 1; fi
}
run_check "deploy.sh --dry-run --topology all (three bills; firehose without Kinesis or ingest)" dry_run_topologies

bad_args() {
    # Unknown options and bad values are refused with a usage message, not ignored.
    if bash infra/deploy.sh --dry-run --arch sparc >/dev/null 2>&1; then echo "accepted --arch sparc"; return 1; fi
    if bash infra/deploy.sh --dry-run --bogus >/dev/null 2>&1; then echo "accepted --bogus"; return 1; fi
    if bash infra/deploy.sh --dry-run --rate -1 >/dev/null 2>&1; then echo "accepted --rate -1"; return 1; fi
    if bash infra/deploy.sh --dry-run --ingest-sink sqs >/dev/null 2>&1; then echo "accepted --ingest-sink sqs"; return 1; fi
    if bash infra/deploy.sh --dry-run --topology sqs >/dev/null 2>&1; then echo "accepted --topology sqs"; return 1; fi
    if bash infra/deploy.sh --dry-run --batch 1000 >/dev/null 2>&1; then echo "accepted a batch above 128 KiB"; return 1; fi
    if bash infra/deploy.sh --dry-run --param bad >/dev/null 2>&1; then echo "accepted --param bad"; return 1; fi
    return 0
}
run_check "deploy.sh rejects bad arguments" bad_args

run_check "deploy.sh --help" bash infra/deploy.sh --help
run_check "destroy.sh --help" bash infra/destroy.sh --help
run_check "provision-devices.sh --dry-run --count 3" bash infra/provision-devices.sh --dry-run --count 3 --out "$ENV_DIR/certs-dry-run"

no_creds() {
    # Without credentials the real modes stop early with a message naming
    # AWS_PROFILE/AWS_REGION. A bogus profile makes that certain and offline.
    local out
    local s arg
    for s in deploy.sh destroy.sh provision-devices.sh; do
        arg=--yes
        [ "$s" = deploy.sh ] && arg=--skip-build
        out="$(offline env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN \
            AWS_PROFILE=iotpipe-check-no-such-profile AWS_CONFIG_FILE=/dev/null \
            AWS_SHARED_CREDENTIALS_FILE=/dev/null bash "infra/$s" "$arg" 2>&1 </dev/null)" && {
            echo "$s succeeded without credentials"
            return 1
        }
        printf '%s\n' "$out" | grep -q 'AWS_PROFILE' || { printf '%s: %s\n' "$s" "$out"; return 1; }
    done
}
# The pinned AWS CLI that tests/setup/services.sh installs, when there is one.
if [ -x "$ENV_DIR/awscli/bin/aws" ]; then
    PATH="$ENV_DIR/awscli/bin:$PATH"
fi
if command -v aws >/dev/null 2>&1; then
    run_check "scripts fail clearly without credentials" no_creds
else
    header "scripts fail clearly without credentials"
    echo "skipped: no aws CLI (source tests/setup/services.sh && services_up installs one)"
fi

if ensure_shellcheck; then
    run_check "shellcheck infra/*.sh" shellcheck -x infra/deploy.sh infra/destroy.sh infra/provision-devices.sh infra/check.sh infra/smoke-moto.sh
else
    header "shellcheck infra/*.sh"
    echo "skipped: shellcheck not available (apt-get install shellcheck)"
fi

header "summary"
if [ "${#FAILED_NAMES[@]}" -gt 0 ]; then
    printf 'failed: %s\n' "${FAILED_NAMES[@]}"
fi
printf 'infra checks took %ss\n' "$((SECONDS - START_ALL))"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
