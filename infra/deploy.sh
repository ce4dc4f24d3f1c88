#!/usr/bin/env bash
# Build, upload and deploy the iot-pipeline stack. The first deploy is the same command as
# every later one (CloudFormation change sets; an unchanged stack is not an error).
#
#   infra/deploy.sh --dry-run --devices 1000 --rate 0.2     # plan + monthly bill, no AWS account
#   infra/deploy.sh                                          # build, package, deploy, print outputs
#
# Honours AWS_PROFILE and AWS_REGION (or AWS_DEFAULT_REGION / the profile's region).
set -euo pipefail

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$INFRA_DIR/.." && pwd)"
TEMPLATE="$INFRA_DIR/template.yaml"
BUILD_DIR="$ROOT/target/iotpipe-infra"
BINARIES=(ingest transform rollup)

usage() {
    cat <<'EOF'
Usage: infra/deploy.sh [options]

Deploys infra/template.yaml (IoT rule, Lambdas, Kinesis, Firehose, S3, Glue, alarms).
Real mode: checks aws/cargo-lambda/credentials, runs
  cargo lambda build --release --arm64 --output-format zip --bin ingest --bin transform --bin rollup
then `aws cloudformation package` + `aws cloudformation deploy`, and prints the outputs
(IoT data endpoint, bucket, stream, an example device-sim command).

Options:
  --dry-run               print the resources and the estimated monthly bill; needs no AWS
                          account and no network
  --stack-name NAME       CloudFormation stack (default: iot-pipeline)
  --region REGION         AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, the profile's)
  --arch arm64|x86_64     Lambda architecture and cargo-lambda target (default: arm64)
  --kinesis-mode on-demand|provisioned   stream capacity mode (default: on-demand)
  --shards N              shards when provisioned (default: sized from --devices x --rate)
  --devices N             fleet size, for the bill and the shard sizing (default: 1000)
  --rate R                messages per second per device (default: 0.2 = one per 5 s)
  --payload-bytes B       bytes per MQTT message (default: 200)
  --basic-ingest          price devices publishing to the Basic Ingest topic
  --alarm-email ADDR      subscribe ADDR to the alarm SNS topic
  --artifact-bucket NAME  S3 bucket for packaged code (default: iotpipe-artifacts-ACCOUNT-REGION,
                          created if missing)
  --skip-build            reuse target/lambda/*/bootstrap.zip
  -h, --help              this help

Other estimator assumptions: python3 infra/cost.py --help
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
SHARDS=0
DEVICES=1000
RATE=0.2
PAYLOAD_BYTES=200
BASIC_INGEST=0
ALARM_EMAIL=""
ARTIFACT_BUCKET=""
SKIP_BUILD=0

need_value() { if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi; }

while [ "$#" -gt 0 ]; do
    case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --stack-name) need_value "$@"; STACK_NAME="$2"; shift ;;
    --region) need_value "$@"; REGION="$2"; shift ;;
    --arch) need_value "$@"; ARCH="$2"; shift ;;
    --kinesis-mode) need_value "$@"; KINESIS_MODE="$2"; shift ;;
    --shards) need_value "$@"; SHARDS="$2"; shift ;;
    --devices) need_value "$@"; DEVICES="$2"; shift ;;
    --rate) need_value "$@"; RATE="$2"; shift ;;
    --payload-bytes) need_value "$@"; PAYLOAD_BYTES="$2"; shift ;;
    --basic-ingest) BASIC_INGEST=1 ;;
    --alarm-email) need_value "$@"; ALARM_EMAIL="$2"; shift ;;
    --artifact-bucket) need_value "$@"; ARTIFACT_BUCKET="$2"; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

case "$ARCH" in arm64 | x86_64) ;; *) die "--arch must be arm64 or x86_64, not '$ARCH'" ;; esac
case "$KINESIS_MODE" in on-demand | provisioned) ;; *) die "--kinesis-mode must be on-demand or provisioned, not '$KINESIS_MODE'" ;; esac
is_uint "$DEVICES" || die "--devices must be a whole number >= 0, not '$DEVICES'"
is_number "$RATE" || die "--rate must be a number >= 0 (messages/s per device), not '$RATE'"
if ! is_uint "$PAYLOAD_BYTES" || [ "$PAYLOAD_BYTES" -eq 0 ]; then die "--payload-bytes must be a whole number > 0"; fi
is_uint "$SHARDS" || die "--shards must be a whole number"
[[ "$STACK_NAME" =~ ^[A-Za-z][A-Za-z0-9-]{0,127}$ ]] || die "--stack-name must match [A-Za-z][A-Za-z0-9-]*"

# Names derived from the stack name, so two stacks can live in one account.
RULE_NAME="$(printf '%s' "$STACK_NAME" | tr -c 'A-Za-z0-9\n' '_')_telemetry"
GLUE_DB="$(printf '%s' "$STACK_NAME" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9\n' '_')"
CFN_KINESIS_MODE="ON_DEMAND"
[ "$KINESIS_MODE" = provisioned ] && CFN_KINESIS_MODE="PROVISIONED"

cost_args=(--devices "$DEVICES" --rate "$RATE" --payload-bytes "$PAYLOAD_BYTES" --arch "$ARCH"
    --kinesis-mode "$KINESIS_MODE" --shards "$SHARDS" --template "$TEMPLATE")
[ "$BASIC_INGEST" = 1 ] && cost_args+=(--basic-ingest)

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
    "TopicRuleName=$RULE_NAME"
    "GlueDatabaseName=$GLUE_DB"
    "KinesisStreamMode=$CFN_KINESIS_MODE"
    "KinesisShardCount=$SHARDS"
)
[ -n "$ALARM_EMAIL" ] && PARAMS+=("AlarmEmail=$ALARM_EMAIL")

build_flag="--arm64"
[ "$ARCH" = x86_64 ] && build_flag="--x86-64"
BUILD_CMD=(cargo lambda build --release "$build_flag" --output-format zip)
for b in "${BINARIES[@]}"; do BUILD_CMD+=(--bin "$b"); done

# ---------------------------------------------------------------------------- dry run
if [ "$DRY_RUN" = 1 ]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is required for --dry-run"
    echo "Dry run: nothing is built, uploaded or deployed; no AWS call is made."
    echo
    echo "Stack:      $STACK_NAME (region: ${REGION:-${AWS_REGION:-${AWS_DEFAULT_REGION:-from your AWS profile}}})"
    echo "Template:   infra/template.yaml (AWS SAM)"
    echo "Parameters: ${PARAMS[*]}"
    echo
    echo "Would run:"
    echo "  ${BUILD_CMD[*]}"
    echo "  aws cloudformation package --template-file infra/template.yaml --s3-bucket <artifact bucket> \\"
    echo "      --s3-prefix $STACK_NAME --output-template-file target/iotpipe-infra/packaged.yaml"
    echo "  aws cloudformation deploy --stack-name $STACK_NAME --template-file target/iotpipe-infra/packaged.yaml \\"
    echo "      --s3-bucket <artifact bucket> --s3-prefix $STACK_NAME \\"
    echo "      --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset \\"
    echo "      --parameter-overrides ${PARAMS[*]}"
    echo "  aws iot describe-endpoint --endpoint-type iot:Data-ATS"
    echo
    echo "Resources that would be created (logical id, type):"
    n=0
    while IFS=$'\t' read -r logical_id rtype; do
        n=$((n + 1))
        note=""
        case "$rtype" in
        AWS::Serverless::Function) note="  (SAM expands it: AWS::Lambda::Function, + AWS::Lambda::EventInvokeConfig where set)" ;;
        AWS::SNS::Subscription) [ -z "$ALARM_EMAIL" ] && note="  (skipped: no --alarm-email)" ;;
        esac
        printf '  %-30s %s%s\n' "$logical_id" "$rtype" "$note"
    done < <(python3 "$INFRA_DIR/tmpl.py" resources "$TEMPLATE")
    echo "  ($n resources in the template)"
    echo
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
    [ -s "$ROOT/target/lambda/$b/bootstrap.zip" ] || die "missing target/lambda/$b/bootstrap.zip (build failed, or --skip-build without a build)"
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

mkdir -p "$BUILD_DIR"
PACKAGED="$BUILD_DIR/packaged.yaml"
echo "==> aws cloudformation package -> s3://$ARTIFACT_BUCKET/$STACK_NAME/"
aws cloudformation package --template-file "$TEMPLATE" --s3-bucket "$ARTIFACT_BUCKET" \
    --s3-prefix "$STACK_NAME" --output-template-file "$PACKAGED" >/dev/null

echo "==> aws cloudformation deploy --stack-name $STACK_NAME"
# --s3-bucket: a template over 51,200 bytes must be passed by S3 URL (the packaged one is close).
aws cloudformation deploy --stack-name "$STACK_NAME" --template-file "$PACKAGED" \
    --s3-bucket "$ARTIFACT_BUCKET" --s3-prefix "$STACK_NAME" \
    --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset \
    --parameter-overrides "${PARAMS[@]}" --tags project=iot-pipeline "stack=$STACK_NAME"

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
RULE="$(output TopicRuleName)"

cat <<EOF

Deployed. Next:
  1. Devices (things, certificates, policy):
       infra/provision-devices.sh --stack-name $STACK_NAME --count 10 --out ./certs
  2. Simulate the fleet against AWS IoT Core (mutual TLS on 8883):
       device-sim --broker mqtts://$ENDPOINT:8883 --cert-dir ./certs --devices 10 --rate $RATE
     (the CA is ./certs/AmazonRootCA1.pem; Basic Ingest, no messaging charge: add
      --basic-ingest $RULE to publish to \$aws/rules/$RULE/dt/<fleet>/<device_id>/telemetry)
  3. Watch data land:  aws s3 ls s3://$BUCKET/telemetry/ --recursive | tail
     Stream:           aws kinesis describe-stream-summary --stream-name $STREAM
     Query (Athena):   SELECT * FROM "$GLUE_DB"."telemetry" WHERE dt = '<yyyy-MM-dd>' LIMIT 10
  Tear down: infra/destroy.sh --stack-name $STACK_NAME   (add --force-empty-bucket to delete the data)
EOF
