#!/usr/bin/env bash
# Build, upload and deploy the iot-pipeline stack. The first deploy is the same command as
# every later one (CloudFormation change sets; an unchanged stack is not an error).
#
#   infra/deploy.sh --dry-run --devices 1000 --rate 0.2     # plan + monthly bill, no AWS account
#   infra/deploy.sh                                          # build, package, deploy, print outputs
#
# Honours AWS_PROFILE and AWS_REGION (or AWS_DEFAULT_REGION / the profile's region), and
# AWS_ENDPOINT_URL (an AWS-compatible server; the test suite's smoke deploy uses moto).
#
# The deploy is create-stack the first time and update-stack afterwards, chosen from the
# stack's state, not `aws cloudformation deploy`: the same two API calls on AWS, and
# they also work on moto, whose change-set path leaves a stack without outputs.
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$INFRA_DIR/.." && pwd)"
TEMPLATE="$INFRA_DIR/template.yaml"
BINARIES=(ingest transform rollup report)
# The template names each function's code ../target/lambda/<bin>/bootstrap.zip (relative to
# infra/); the deploy points that prefix at the artifacts directory.
CODE_PREFIX="../target/lambda/"

usage() {
    cat <<'EOF'
Usage: infra/deploy.sh [options]

Deploys infra/template.yaml (IoT rule, Lambdas, Kinesis, Firehose, S3, Glue, alarms).
Real mode: checks aws/cargo-lambda/credentials, runs
  cargo lambda build --release --arm64 --output-format zip --lambda-dir target/lambda \
      -p ingest -p transform -p analytics -p dashboard --bin ingest --bin transform --bin rollup \
      --bin report
then `aws cloudformation package` (uploads the zips to the artifact bucket), uploads the
packaged template, and runs `aws cloudformation create-stack` the first time or
`update-stack` afterwards (same command every time; "no changes" is not an error), waits,
and prints the outputs (IoT data endpoint, bucket, stream, an example device-sim command).
Stack parameters not set by an option below go back to the template's defaults on every
deploy: the command line is the whole configuration.

Options:
  --dry-run               print the resources and the estimated monthly bill; needs no AWS
                          account and no network
  --stack-name NAME       CloudFormation stack (default: iot-pipeline)
  --region REGION         AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, the profile's)
  --arch arm64|x86_64     Lambda architecture and cargo-lambda target (default: arm64)
  --ingest-sink kinesis|firehose   where ingest writes: the Kinesis stream that feeds Firehose
                          (default), or PutRecordBatch straight to a DirectPut Firehose stream
                          with no Kinesis stream (cheaper idle; no per-device order or replay)
  --kinesis-mode on-demand|provisioned   stream capacity mode (default: on-demand)
  --shards N              shards when provisioned (default: sized from --devices x --rate)
  --devices N             fleet size, for the bill and the shard sizing (default: 1000)
  --rate R                messages per second per device (default: 0.2 = one per 5 s)
  --payload-bytes B       bytes per message (default: 200)
  --batch K               messages per publish (device-side JSON array batches; default: 1)
  --metrics M             readings per message (default: 3)
  --topology T            the bill's topology: firehose, kinesis, per-message or all
                          (default: the template's Topology default when it has that
                          parameter, else per-message, the design it deploys); the same
                          figures as `iotpipe cost` for the same options
  --alarm-email ADDR      subscribe ADDR to the alarm SNS topic
  --artifact-bucket NAME  S3 bucket for packaged code (default: iotpipe-artifacts-ACCOUNT-REGION,
                          created if missing)
  --param KEY=VALUE       any other template parameter, e.g. --param IngestMemorySize=256
                          (repeatable; see the Parameters of infra/template.yaml)
  --skip-build            reuse target/lambda/<bin>/bootstrap.zip from an earlier build
  --artifacts DIR         deploy prebuilt zips DIR/<bin>/bootstrap.zip (bin: ingest, transform,
                          rollup, report) instead of building; the smoke test passes tiny dummy zips
  --template FILE         deploy FILE instead of infra/template.yaml (the smoke test passes a
                          plain-CloudFormation rendering for moto); function code must be
                          named ../target/lambda/<bin>/bootstrap.zip as in the real template
  --endpoint-url URL      AWS-compatible endpoint for every call (same as AWS_ENDPOINT_URL)
  --package-only          build and upload the code and the packaged template, print where
                          they are, and stop before creating or updating the stack
  -h, --help              this help

The bill: python3 infra/cost.py --help; prices and assumptions in infra/prices.toml
EOF
}

die() {
    echo "deploy.sh: $*" >&2
    exit 1
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_number() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?$|^[.][0-9]+$ ]]; }

DRY_RUN=0
STACK_NAME="iot-pipeline"
REGION=""
ARCH="arm64"
KINESIS_MODE="on-demand"
INGEST_SINK="kinesis"
SHARDS=0
DEVICES=1000
RATE=0.2
PAYLOAD_BYTES=200
BATCH=1
METRICS=3
TOPOLOGY=""
ALARM_EMAIL=""
ARTIFACT_BUCKET=""
SKIP_BUILD=0
ARTIFACTS_DIR=""
EXTRA_PARAMS=()
PACKAGE_ONLY=0

need_value() { if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi; }

while [ "$#" -gt 0 ]; do
    case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --stack-name) need_value "$@"; STACK_NAME="$2"; shift ;;
    --region) need_value "$@"; REGION="$2"; shift ;;
    --arch) need_value "$@"; ARCH="$2"; shift ;;
    --kinesis-mode) need_value "$@"; KINESIS_MODE="$2"; shift ;;
    --ingest-sink) need_value "$@"; INGEST_SINK="$2"; shift ;;
    --shards) need_value "$@"; SHARDS="$2"; shift ;;
    --devices) need_value "$@"; DEVICES="$2"; shift ;;
    --rate) need_value "$@"; RATE="$2"; shift ;;
    --payload-bytes) need_value "$@"; PAYLOAD_BYTES="$2"; shift ;;
    --batch) need_value "$@"; BATCH="$2"; shift ;;
    --metrics) need_value "$@"; METRICS="$2"; shift ;;
    --topology) need_value "$@"; TOPOLOGY="$2"; shift ;;
    --alarm-email) need_value "$@"; ALARM_EMAIL="$2"; shift ;;
    --artifact-bucket) need_value "$@"; ARTIFACT_BUCKET="$2"; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    --artifacts) need_value "$@"; ARTIFACTS_DIR="$2"; shift ;;
    --template) need_value "$@"; TEMPLATE="$2"; shift ;;
    --endpoint-url) need_value "$@"; export AWS_ENDPOINT_URL="$2"; shift ;;
    --param) need_value "$@"; EXTRA_PARAMS+=("$2"); shift ;;
    --package-only) PACKAGE_ONLY=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

case "$ARCH" in arm64 | x86_64) ;; *) die "--arch must be arm64 or x86_64, not '$ARCH'" ;; esac
case "$KINESIS_MODE" in on-demand | provisioned) ;; *) die "--kinesis-mode must be on-demand or provisioned, not '$KINESIS_MODE'" ;; esac
case "$INGEST_SINK" in kinesis | firehose) ;; *) die "--ingest-sink must be kinesis or firehose, not '$INGEST_SINK'" ;; esac
is_uint "$DEVICES" || die "--devices must be a whole number >= 0, not '$DEVICES'"
is_number "$RATE" || die "--rate must be a number >= 0 (messages/s per device), not '$RATE'"
if ! is_uint "$PAYLOAD_BYTES" || [ "$PAYLOAD_BYTES" -eq 0 ]; then die "--payload-bytes must be a whole number > 0"; fi
if ! is_uint "$BATCH" || [ "$BATCH" -eq 0 ]; then die "--batch must be a whole number > 0"; fi
if ! is_uint "$METRICS" || [ "$METRICS" -eq 0 ]; then die "--metrics must be a whole number > 0"; fi
# The template's Topology parameter, when it has one (its default is what a deploy builds).
TEMPLATE_HAS_TOPOLOGY=0
TEMPLATE_TOPOLOGY_DEFAULT=""
if grep -q '^  Topology:$' "$TEMPLATE" 2>/dev/null; then
    TEMPLATE_HAS_TOPOLOGY=1
    TEMPLATE_TOPOLOGY_DEFAULT="$(sed -n '/^  Topology:$/,/^  [A-Za-z]/s/^    Default: *//p' "$TEMPLATE" | head -1)"
elif [[ "$TEMPLATE" == *.json ]] && TEMPLATE_TOPOLOGY_DEFAULT="$(python3 -c 'import json, sys
print(json.load(open(sys.argv[1]))["Parameters"]["Topology"]["Default"])' "$TEMPLATE" 2>/dev/null)"; then
    # A rendered template (infra/moto_template.py writes JSON).
    TEMPLATE_HAS_TOPOLOGY=1
fi
if [ -z "$TOPOLOGY" ]; then
    if [ "$TEMPLATE_HAS_TOPOLOGY" = 1 ]; then
        TOPOLOGY="$TEMPLATE_TOPOLOGY_DEFAULT"
    else
        TOPOLOGY="per-message"
    fi
fi
case "$TOPOLOGY" in firehose | kinesis | per-message | all) ;; *) die "--topology must be firehose, kinesis, per-message or all, not '$TOPOLOGY'" ;; esac
if [ "$DRY_RUN" = 0 ] && [ "$TEMPLATE_HAS_TOPOLOGY" = 0 ] && [ "$TOPOLOGY" != per-message ]; then
    die "--topology $TOPOLOGY: ${TEMPLATE#"$ROOT"/} deploys the per-message topology only (no Topology parameter yet); price the others with --dry-run"
fi
[ "$TOPOLOGY" = all ] && [ "$DRY_RUN" = 0 ] && die "--topology all is for --dry-run (one stack has one topology)"
is_uint "$SHARDS" || die "--shards must be a whole number"
[[ "$STACK_NAME" =~ ^[A-Za-z][A-Za-z0-9-]{0,127}$ ]] || die "--stack-name must match [A-Za-z][A-Za-z0-9-]*"
[ -f "$TEMPLATE" ] || die "--template $TEMPLATE: no such file"
for p in "${EXTRA_PARAMS[@]}"; do
    [[ "$p" =~ ^[A-Za-z0-9]+=.*$ ]] || die "--param wants KEY=VALUE (a template parameter), not '$p'"
done
if [ -n "$ARTIFACTS_DIR" ]; then
    [ -d "$ARTIFACTS_DIR" ] || die "--artifacts $ARTIFACTS_DIR: no such directory"
    ARTIFACTS_DIR="$(cd "$ARTIFACTS_DIR" && pwd)"
    SKIP_BUILD=1
else
    ARTIFACTS_DIR="$ROOT/target/lambda"
fi
# Per stack, so that two deploys from one clone do not share their staged files.
BUILD_DIR="$ROOT/target/iotpipe-infra/$STACK_NAME"

# Names derived from the stack name, so two stacks can live in one account.
RULE_NAME="$(printf '%s' "$STACK_NAME" | tr -c 'A-Za-z0-9\n' '_')_telemetry"
GLUE_DB="$(printf '%s' "$STACK_NAME" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9\n' '_')"
CFN_KINESIS_MODE="ON_DEMAND"
[ "$KINESIS_MODE" = provisioned ] && CFN_KINESIS_MODE="PROVISIONED"

cost_args=(--devices "$DEVICES" --rate "$RATE" --payload-bytes "$PAYLOAD_BYTES" --batch "$BATCH"
    --metrics "$METRICS" --arch "$ARCH" --topology "$TOPOLOGY" --template "$TEMPLATE")

# The shard count the estimate sizes from the fleet, unless given.
if [ "$SHARDS" = 0 ]; then
    SHARDS="$(python3 - "$DEVICES" "$RATE" "$PAYLOAD_BYTES" <<'PY'
import math, sys
d, r, b = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
per_s = d * r
print(max(1, math.ceil(per_s / 1000), math.ceil(per_s * (b + 64) / 1048576)))
PY
)"
fi

PARAMS=(
    "Architecture=$ARCH"
    "IngestSink=$INGEST_SINK"
    "TopicRuleName=$RULE_NAME"
    "GlueDatabaseName=$GLUE_DB"
    "KinesisStreamMode=$CFN_KINESIS_MODE"
    "KinesisShardCount=$SHARDS"
)
[ -n "$ALARM_EMAIL" ] && PARAMS+=("AlarmEmail=$ALARM_EMAIL")
if [ "$TEMPLATE_HAS_TOPOLOGY" = 1 ] && [ "$TOPOLOGY" != all ]; then PARAMS+=("Topology=$TOPOLOGY"); fi
PARAMS+=("${EXTRA_PARAMS[@]}")

build_flag="--arm64"
[ "$ARCH" = x86_64 ] && build_flag="--x86-64"
# -p: the Lambda crates are not the workspace's default members (iotpipe, device-sim), and
# `--bin` alone only looks there.
BUILD_CMD=(cargo lambda build --release "$build_flag" --output-format zip --lambda-dir "$ARTIFACTS_DIR"
    -p ingest -p transform -p analytics -p dashboard)
for b in "${BINARIES[@]}"; do BUILD_CMD+=(--bin "$b"); done

# ---------------------------------------------------------------------------- dry run
if [ "$DRY_RUN" = 1 ]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is required for --dry-run"
    echo "Dry run: nothing is built, uploaded or deployed; no AWS call is made."
    echo
    echo "Stack:      $STACK_NAME (region: ${REGION:-${AWS_REGION:-${AWS_DEFAULT_REGION:-from your AWS profile}}})"
    echo "Template:   ${TEMPLATE#"$ROOT"/}"
    echo "Parameters: ${PARAMS[*]}"
    echo
    staged="target/iotpipe-infra/$STACK_NAME"
    echo "Would run:"
    if [ "$SKIP_BUILD" = 1 ]; then
        echo "  (no build: zips from ${ARTIFACTS_DIR#"$ROOT"/}/<bin>/bootstrap.zip)"
    else
        echo "  ${BUILD_CMD[*]}"
    fi
    echo "  aws cloudformation package --template-file $staged/template (code paths -> ${ARTIFACTS_DIR#"$ROOT"/}/) \\"
    echo "      --s3-bucket <artifact bucket> --s3-prefix $STACK_NAME --output-template-file $staged/packaged.yaml"
    echo "  aws s3 cp $staged/packaged.yaml s3://<artifact bucket>/$STACK_NAME/template-<sha256>.yaml"
    echo "  aws cloudformation create-stack (first deploy) | update-stack (later) --stack-name $STACK_NAME \\"
    echo "      --template-url <that object> --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND \\"
    echo "      --parameters ${PARAMS[*]}"
    echo "  aws cloudformation wait stack-create-complete | stack-update-complete"
    echo "  aws iot describe-endpoint --endpoint-type iot:Data-ATS"
    echo
    echo "Resources that would be created (logical id, type):"
    n=0
    # The template's Conditions, for the chosen topology and sink (--topology all: the
    # default's resources are listed, every bill is printed below).
    plan_topology="$TOPOLOGY"
    [ "$plan_topology" = all ] && plan_topology=firehose
    condition_holds() {
        local kinesis_sink=0
        [ "$plan_topology" = per-message ] && [ "$INGEST_SINK" = kinesis ] && kinesis_sink=1
        case "$1" in
        "") return 0 ;;
        HasAlarmEmail) [ -n "$ALARM_EMAIL" ] ;;
        HasIngest) [ "$plan_topology" != firehose ] ;;
        IsKinesisTopology) [ "$plan_topology" = kinesis ] ;;
        IsPerMessageTopology) [ "$plan_topology" = per-message ] ;;
        IsFirehoseTopology) [ "$plan_topology" = firehose ] ;;
        UseKinesisSink) [ "$kinesis_sink" = 1 ] ;;
        HasStream) [ "$kinesis_sink" = 1 ] || [ "$plan_topology" = kinesis ] ;;
        *) return 0 ;;
        esac
    }
    while IFS=$'\t' read -r logical_id rtype condition; do
        n=$((n + 1))
        note=""
        case "$rtype" in
        AWS::Serverless::Function) note="  (SAM expands it: AWS::Lambda::Function, + AWS::Lambda::EventInvokeConfig where set)" ;;
        esac
        if [ "$condition" = HasAlarmEmail ] && [ -z "$ALARM_EMAIL" ]; then
            note="  (skipped: no --alarm-email)"
        elif ! condition_holds "$condition"; then
            note="  (skipped: condition $condition false for topology $plan_topology)"
        fi
        case "$logical_id" in
        TelemetryDeliveryStream)
            if [ "$plan_topology" = per-message ] && [ "$INGEST_SINK" = kinesis ]; then
                note="  (source: the Kinesis stream)"
            elif [ "$plan_topology" = firehose ]; then
                note="  (DirectPut: the topic rule's Firehose action writes it)"
            else
                note="  (DirectPut: ingest writes it)"
            fi ;;
        esac
        printf '  %-30s %s%s\n' "$logical_id" "$rtype" "$note"
    done < <(python3 "$INFRA_DIR/tmpl.py" resources "$TEMPLATE")
    echo "  ($n resources in the template)"
    echo
    if [ "$INGEST_SINK" != kinesis ] || [ "$KINESIS_MODE" != on-demand ]; then
        echo "Note: the bill prices the topologies with an on-demand Kinesis stream where they have one;"
        echo "      --ingest-sink $INGEST_SINK / --kinesis-mode $KINESIS_MODE are not priced separately."
        echo
    fi
    python3 "$INFRA_DIR/cost.py" "${cost_args[@]}"
    exit 0
fi

# ---------------------------------------------------------------------------- real deploy
command -v aws >/dev/null 2>&1 || die "the AWS CLI is required: https://docs.aws.amazon.com/cli/ (or: pip install awscli)"

if [ -z "$REGION" ]; then
    REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
fi
if [ -z "$REGION" ]; then
    REGION="$(aws configure get region 2>/dev/null || true)"
fi
[ -n "$REGION" ] || die "no AWS region: pass --region, or set AWS_REGION (or a region in the AWS_PROFILE profile)"
export AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION"

if ! ACCOUNT="$(aws sts get-caller-identity --query Account --output text 2>&1)"; then
    echo "$ACCOUNT" >&2
    die "no usable AWS credentials (aws sts get-caller-identity failed). Set AWS_PROFILE=<profile> (see 'aws configure list-profiles') or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and AWS_REGION=<region>. AWS_PROFILE=${AWS_PROFILE:-<unset>} AWS_REGION=$REGION"
fi
echo "==> account $ACCOUNT, region $REGION, stack $STACK_NAME (AWS_PROFILE=${AWS_PROFILE:-<unset>})"
[ -n "${AWS_ENDPOINT_URL:-}" ] && echo "==> endpoint $AWS_ENDPOINT_URL (AWS_ENDPOINT_URL), not AWS"

if [ "$SKIP_BUILD" = 0 ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is required (https://rustup.rs)"
    cargo lambda --version >/dev/null 2>&1 || die "cargo-lambda is required: pip install cargo-lambda (or see https://www.cargo-lambda.info)"
    target="aarch64-unknown-linux-gnu"
    [ "$ARCH" = x86_64 ] && target="x86_64-unknown-linux-gnu"
    if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$target"; then
        echo "==> rustup target add $target"
        rustup target add "$target"
    fi
    echo "==> ${BUILD_CMD[*]}"
    (cd "$ROOT" && "${BUILD_CMD[@]}")
fi
for b in "${BINARIES[@]}"; do
    [ -s "$ARTIFACTS_DIR/$b/bootstrap.zip" ] || die "missing $ARTIFACTS_DIR/$b/bootstrap.zip (the build failed, or --skip-build/--artifacts without the zips)"
done

if [ -z "$ARTIFACT_BUCKET" ]; then
    ARTIFACT_BUCKET="iotpipe-artifacts-$ACCOUNT-$REGION"
fi
if ! aws s3api head-bucket --bucket "$ARTIFACT_BUCKET" >/dev/null 2>&1; then
    echo "==> creating artifact bucket s3://$ARTIFACT_BUCKET"
    if [ "$REGION" = us-east-1 ]; then
        aws s3api create-bucket --bucket "$ARTIFACT_BUCKET" >/dev/null
    else
        aws s3api create-bucket --bucket "$ARTIFACT_BUCKET" \
            --create-bucket-configuration "LocationConstraint=$REGION" >/dev/null
    fi
    aws s3api put-public-access-block --bucket "$ARTIFACT_BUCKET" --public-access-block-configuration \
        BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
    aws s3api put-bucket-encryption --bucket "$ARTIFACT_BUCKET" --server-side-encryption-configuration \
        '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"}}]}'
fi

# Stage the template with its code paths pointing at the artifacts directory.
mkdir -p "$BUILD_DIR"
STAGED="$BUILD_DIR/template.${TEMPLATE##*.}"
sed "s#$CODE_PREFIX#$ARTIFACTS_DIR/#g" "$TEMPLATE" >"$STAGED"
PACKAGED="$BUILD_DIR/packaged.yaml"
echo "==> aws cloudformation package -> s3://$ARTIFACT_BUCKET/$STACK_NAME/"
# Its upload progress lines end in carriage returns, not newlines: kept in a log instead.
if ! aws cloudformation package --template-file "$STAGED" --s3-bucket "$ARTIFACT_BUCKET" \
    --s3-prefix "$STACK_NAME" --output-template-file "$PACKAGED" >/dev/null 2>"$BUILD_DIR/package.log"; then
    tr '\r' '\n' <"$BUILD_DIR/package.log" >&2
    die "aws cloudformation package failed (see above)"
fi

# A template over 51,200 bytes must be passed by S3 URL (the packaged one is close).
TEMPLATE_KEY="$STACK_NAME/template-$(sha256sum "$PACKAGED" | cut -c1-16).yaml"
aws s3 cp --only-show-errors "$PACKAGED" "s3://$ARTIFACT_BUCKET/$TEMPLATE_KEY"
S3_ENDPOINT="${AWS_ENDPOINT_URL_S3:-${AWS_ENDPOINT_URL:-}}"
if [ -n "$S3_ENDPOINT" ]; then
    TEMPLATE_URL="${S3_ENDPOINT%/}/$ARTIFACT_BUCKET/$TEMPLATE_KEY"
else
    TEMPLATE_URL="https://$ARTIFACT_BUCKET.s3.$REGION.amazonaws.com/$TEMPLATE_KEY"
fi

if [ "$PACKAGE_ONLY" = 1 ]; then
    echo "packaged template: $PACKAGED"
    echo "uploaded as:       $TEMPLATE_URL"
    echo "(--package-only: stack $STACK_NAME not created or updated)"
    exit 0
fi

PARAMS_FILE="$BUILD_DIR/parameters.json"
python3 -c 'import json, sys
print(json.dumps([{"ParameterKey": k, "ParameterValue": v}
                  for k, v in (a.split("=", 1) for a in sys.argv[1:])], indent=1))' \
    "${PARAMS[@]}" >"$PARAMS_FILE"

stack_status() {
    aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
        --query 'Stacks[0].StackStatus' --output text 2>/dev/null || echo NONE
}

# failed_events — what went wrong, from the stack's latest events.
failed_events() {
    # shellcheck disable=SC2016  # a JMESPath literal, not a shell expansion
    aws cloudformation describe-stack-events --stack-name "$STACK_NAME" --max-items 50 \
        --query 'StackEvents[?contains(ResourceStatus, `FAILED`)].[LogicalResourceId,ResourceStatus,ResourceStatusReason]' \
        --output text >&2 || true
}

STATUS="$(stack_status)"
# shellcheck disable=SC2054  # the commas are inside the Key=...,Value=... shorthand
STACK_ARGS=(--stack-name "$STACK_NAME" --template-url "$TEMPLATE_URL"
    --parameters "file://$PARAMS_FILE" --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND
    --tags Key=project,Value=iot-pipeline "Key=stack,Value=$STACK_NAME")
case "$STATUS" in
NONE)
    echo "==> aws cloudformation create-stack --stack-name $STACK_NAME (first deploy)"
    aws cloudformation create-stack "${STACK_ARGS[@]}" >/dev/null
    if ! aws cloudformation wait stack-create-complete --stack-name "$STACK_NAME"; then
        echo "deploy.sh: creating $STACK_NAME failed ($(stack_status)):" >&2
        failed_events
        die "fix the cause, then: infra/destroy.sh --stack-name $STACK_NAME --yes; infra/deploy.sh ... (a stack whose first create failed cannot be updated)"
    fi
    echo "created stack $STACK_NAME"
    ;;
ROLLBACK_COMPLETE | ROLLBACK_FAILED | CREATE_FAILED | DELETE_FAILED)
    die "stack $STACK_NAME is $STATUS (a failed first create or delete) and cannot be updated: infra/destroy.sh --stack-name $STACK_NAME --yes, then deploy again"
    ;;
*_IN_PROGRESS)
    die "stack $STACK_NAME is $STATUS: wait for it to finish (aws cloudformation describe-stacks --stack-name $STACK_NAME), then deploy again"
    ;;
*)
    echo "==> aws cloudformation update-stack --stack-name $STACK_NAME (stack is $STATUS)"
    if ! out="$(aws cloudformation update-stack "${STACK_ARGS[@]}" 2>&1)"; then
        if printf '%s' "$out" | grep -q 'No updates are to be performed'; then
            echo "no changes: stack $STACK_NAME is up to date"
        else
            printf '%s\n' "$out" >&2
            die "update-stack failed (see above)"
        fi
    elif ! aws cloudformation wait stack-update-complete --stack-name "$STACK_NAME"; then
        echo "deploy.sh: updating $STACK_NAME failed ($(stack_status)); CloudFormation rolls it back:" >&2
        failed_events
        exit 1
    else
        echo "updated stack $STACK_NAME"
    fi
    ;;
esac

output() {
    aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
        --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}

echo
echo "==> outputs"
aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
    --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output text | sort |
    while IFS=$'\t' read -r k v; do printf '  %-24s %s\n' "$k" "$v"; done

ENDPOINT="$(aws iot describe-endpoint --endpoint-type iot:Data-ATS --query endpointAddress --output text 2>/dev/null || echo '<aws iot describe-endpoint --endpoint-type iot:Data-ATS>')"
printf '  %-24s %s\n' "IotDataEndpoint" "$ENDPOINT"
BUCKET="$(output BucketName)"
STREAM="$(output StreamName)"
if [ -n "$STREAM" ] && [ "$STREAM" != None ]; then
    STREAM_HINT="aws kinesis describe-stream-summary --stream-name $STREAM"
else
    STREAM_HINT="aws firehose describe-delivery-stream --delivery-stream-name $(output DeliveryStreamName)"
fi
RULE="$(output TopicRuleName)"
if [ -z "$RULE" ] || [ "$RULE" = None ]; then RULE="$RULE_NAME"; fi

cat <<EOF

Deployed. Next:
  1. Devices (things, certificates, policy):
       infra/provision-devices.sh --stack-name $STACK_NAME --count 10 --out ./certs
  2. Simulate the fleet against AWS IoT Core (mutual TLS on 8883):
       device-sim --broker mqtts://$ENDPOINT:8883 --cert-dir ./certs --devices 10 --rate $RATE
     (the CA is ./certs/AmazonRootCA1.pem; Basic Ingest, no messaging charge: add
      --basic-ingest $RULE to publish to \$aws/rules/$RULE/dt/<fleet>/<device_id>/telemetry)
  3. Watch data land:  aws s3 ls s3://$BUCKET/telemetry/ --recursive | tail
     Stream:           $STREAM_HINT
     Query (Athena):   SELECT * FROM "$GLUE_DB"."telemetry" WHERE dt = '<yyyy-MM-dd>' LIMIT 10
  Tear down: infra/destroy.sh --stack-name $STACK_NAME   (add --force-empty-bucket to delete the data)
EOF
