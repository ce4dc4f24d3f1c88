#!/usr/bin/env bash
# Smoke deploy of infra/deploy.sh and infra/destroy.sh against moto's CloudFormation, run by
# the test suite (tests/run.sh) after `services_up`:
#
#   source tests/setup/services.sh && services_up    # moto + the pinned AWS CLI venv
#   bash infra/smoke-moto.sh
#
# It proves the scripts' mechanics with the same commands a user runs, only pointed at moto
# (--endpoint-url) and given tiny dummy Lambda zips (--artifacts) instead of a cargo-lambda
# release build:
#   0. deploy.sh --package-only on the real SAM template: every CodeUri becomes an uploaded zip;
#   1. deploy: artifact bucket, `aws cloudformation package` upload, template upload,
#      create-stack, outputs printed;
#   2. the same command with changed parameters: update-stack, the change applied in place;
#      then --ingest-sink firehose: the template's conditions point ingest at the delivery
#      stream and drop the stream output; 2c/2d: stacks of their own with --topology kinesis
#      (event-source mapping) and --topology firehose (no ingest, the transform in raw mode);
#   3. destroy.sh refuses while the data bucket holds an object, and deletes nothing;
#   4. destroy.sh --force-empty-bucket --delete-artifacts empties the bucket, deletes the
#      stack and the packaged code; a second destroy finds nothing to delete.
#
# moto does not run the SAM transform and has no CloudFormation model for several resource
# types, so the template is first translated offline and trimmed by infra/moto_template.py;
# the removed types, and why, are printed at the start. A missing moto or AWS CLI is a failed
# test, never a skip. The last line is "N passed, M failed".
#
# Environment (exported by services_up):
#   IOTPIPE_TEST_MOTO  http://127.0.0.1:PORT of the moto server
#   IOTPIPE_TEST_AWS   the pinned aws executable (.test-env/awscli/bin/aws)
# bash -c '...' snippets and JMESPath literals are single-quoted on purpose; fails() is
# called through check "$@".
# shellcheck disable=SC2016,SC2317
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
ENV_DIR="$ROOT/.test-env"

PASSED=0
FAILED=0
START=$SECONDS

ok() {
    printf 'ok: %s\n' "$*"
    PASSED=$((PASSED + 1))
}
bad() {
    printf 'FAILED: %s\n' "$*"
    FAILED=$((FAILED + 1))
}
# check NAME CMD... — CMD's exit status decides.
check() {
    local name="$1"
    shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
# has TEXT REGEX — TEXT has a line matching REGEX; fails CMD... — CMD exits non-zero.
has() { grep -Eq -- "$2" <<<"$1"; }
fails() { ! "$@" >/dev/null 2>&1; }
finish() {
    printf '\nsmoke deploy took %ss\n' "$((SECONDS - START))"
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
    exit
}
fatal() {
    bad "$*"
    finish
}

# ------------------------------------------------------------------ prerequisites
[ -n "${IOTPIPE_TEST_MOTO:-}" ] ||
    fatal "IOTPIPE_TEST_MOTO is not set: start moto with 'source tests/setup/services.sh && services_up' (bash tests/run.sh does)"
AWS_BIN="${IOTPIPE_TEST_AWS:-$ENV_DIR/awscli/bin/aws}"
[ -x "$AWS_BIN" ] || fatal "the pinned AWS CLI is missing ($AWS_BIN): services_up installs it into .test-env/awscli"
# The scripts call `aws` from PATH: the pinned one comes first.
PATH="$(dirname "$AWS_BIN"):$PATH"
export PATH

# moto's CreateStack reads a TemplateURL path-style (http://host:port/bucket/key) only when
# the host is "localhost"; with 127.0.0.1 it takes "127" for the bucket. localhost is the
# same loopback server.
ENDPOINT="${IOTPIPE_TEST_MOTO/127.0.0.1/localhost}"

# Dummy credentials and region; never a profile, never the metadata service.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_DEFAULT_REGION AWS_ENDPOINT_URL
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The assertions' own AWS calls.
awsm() { AWS_DEFAULT_REGION=us-east-1 "$AWS_BIN" --endpoint-url "$ENDPOINT" "$@"; }

# (Not /moto-api/data.json: it answers 500 once moto holds a Lambda function and no Docker.)
awsm sts get-caller-identity --query Account --output text >/dev/null 2>&1 ||
    fatal "no moto server answers at IOTPIPE_TEST_MOTO=$IOTPIPE_TEST_MOTO (services_up starts one)"

# The SAM translator lives in the aws-sam-cli venv that infra/check.sh makes; same pin.
SAM_SPEC="$(sed -n 's/^SAM_SPEC="\(.*\)"$/\1/p' infra/check.sh)"
SAM_PY="$ENV_DIR/sam/bin/python"
if ! [ -x "$SAM_PY" ] || [ "$(cat "$ENV_DIR/sam/.spec" 2>/dev/null)" != "$SAM_SPEC" ]; then
    echo "installing $SAM_SPEC into .test-env/sam (for the offline SAM translation)"
    rm -rf "$ENV_DIR/sam"
    { python3 -m venv "$ENV_DIR/sam" && "$SAM_PY" -m pip install --quiet "$SAM_SPEC" &&
        echo "$SAM_SPEC" >"$ENV_DIR/sam/.spec"; } || fatal "pip install $SAM_SPEC failed"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/iotpipe-smoke.XXXXXX")"
STACK="iotpipe-smoke-$(date +%s)-$$"
# deploy.sh stages its files under target/iotpipe-infra/<stack>/.
trap 'rm -rf "$WORK" "$ROOT/target/iotpipe-infra/$STACK" "$ROOT/target/iotpipe-infra/$STACK-sam"' EXIT
echo "moto: $ENDPOINT, stack: $STACK, aws: $("$AWS_BIN" --version 2>&1 | cut -d' ' -f1)"

# ------------------------------------------------------------------ the template for moto
printf '\n==> translate and trim infra/template.yaml for moto (infra/moto_template.py)\n'
# The resource types this moto's CloudFormation creates, asked from moto itself.
"$ENV_DIR/moto-venv/bin/python" -W ignore -c '
from moto.cloudformation.parsing import get_model_map, NULL_MODELS
print("\n".join(sorted(t for t in get_model_map() if t not in NULL_MODELS)))' >"$WORK/moto-types" ||
    fatal "cannot list moto's CloudFormation resource types (.test-env/moto-venv)"
"$SAM_PY" infra/moto_template.py infra/template.yaml "$WORK/template.json" \
    --moto-types "$WORK/moto-types" 2>"$WORK/render.log" || { cat "$WORK/render.log"; fatal "moto_template.py failed"; }
echo "Not covered by this smoke deploy (removed from the template before deploying to moto):"
sed 's/^/  /' "$WORK/render.log"
kept_types() {
    python3 -c 'import json, sys; t = json.load(open(sys.argv[1]))
print("\n".join(sorted({r["Type"] for r in t["Resources"].values()})))' "$WORK/template.json"
}
kept="$(kept_types)"
for t in AWS::S3::Bucket AWS::Kinesis::Stream AWS::Lambda::Function AWS::IAM::Role AWS::SQS::Queue \
    AWS::Logs::LogGroup AWS::SNS::Topic AWS::Lambda::Permission; do
    grep -qx "$t" <<<"$kept" || bad "the moto template lost $t (moto's supported types changed?)"
done
ok "moto template keeps S3, Kinesis, Lambda (6 functions), IAM, SQS, Logs, SNS: $(tr '\n' ' ' <<<"$kept")"

# ------------------------------------------------------------------ dummy artifacts
# Tiny zips instead of release builds (minutes); distinct content so each gets its own key.
for b in ingest transform rollup report; do
    mkdir -p "$WORK/artifacts/$b"
    python3 -c 'import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    info = zipfile.ZipInfo("bootstrap"); info.external_attr = 0o755 << 16
    z.writestr(info, "#!/bin/sh\n# %s: dummy for the moto smoke deploy\nexit 1\n" % sys.argv[2])' \
        "$WORK/artifacts/$b/bootstrap.zip" "$b"
done

# ------------------------------------------------------------------ 0. package the real SAM template
# The SAM template cannot be deployed to moto, but its packaging can: every CodeUri must
# become an S3 location of an uploaded zip, and the transform must stay for CloudFormation.
printf '\n==> 0. infra/deploy.sh --package-only (the real SAM template, dummy zips)\n'
out0="$(bash infra/deploy.sh --package-only --stack-name "$STACK-sam" --artifacts "$WORK/artifacts" \
    --endpoint-url "$ENDPOINT" 2>&1)"
rc=$?
printf '%s\n' "$out0" | sed 's/^/  | /'
packaged="$(sed -n 's/^packaged template: //p' <<<"$out0")"
if [ "$rc" -eq 0 ] && [ -s "$packaged" ]; then
    ok "deploy.sh --package-only exited 0 and wrote $packaged"
    n_uri="$(grep -c "^ *CodeUri: s3://iotpipe-artifacts-123456789012-us-east-1/$STACK-sam/" "$packaged")"
    check "all 6 functions' CodeUri point at the uploaded zips ($n_uri)" test "$n_uri" -eq 6
    check "no local code path is left, and the SAM transform stays" \
        bash -c '! grep -q "target/lambda" "$1" && grep -q "^Transform: AWS::Serverless-2016-10-31" "$1"' _ "$packaged"
    check "the stack was not created" fails awsm cloudformation describe-stacks --stack-name "$STACK-sam"
else
    bad "deploy.sh --package-only exited $rc"
fi
awsm s3 rm --recursive --only-show-errors "s3://iotpipe-artifacts-123456789012-us-east-1/$STACK-sam/" || true

# Steps 1-2b deploy the per-message topology (an ingest function and a Kinesis stream to
# check); 2c and 2d switch the same stack to the kinesis and firehose topologies (a later
# --topology overrides this one).
DEPLOY=(bash infra/deploy.sh --stack-name "$STACK" --template "$WORK/template.json"
    --artifacts "$WORK/artifacts" --endpoint-url "$ENDPOINT" --topology per-message)

# load_stack — the stack's status, outputs and parameters in one call (each aws call costs
# about half a second of CLI start-up); output KEY / param KEY read them.
STACK_TEXT=""
load_stack() {
    STACK_TEXT="$(awsm cloudformation describe-stacks --stack-name "$STACK" --output text \
        --query 'Stacks[0].[[`status`, StackStatus], Outputs[].[`output`, OutputKey, OutputValue], Parameters[].[`param`, ParameterKey, ParameterValue]][]' 2>/dev/null)"
}
output() { awk -F'\t' -v k="$1" '$1 == "output" && $2 == k { print $3 }' <<<"$STACK_TEXT"; }
param() { awk -F'\t' -v k="$1" '$1 == "param" && $2 == k { print $3 }' <<<"$STACK_TEXT"; }
stack_status() {
    awsm cloudformation describe-stacks --stack-name "$STACK" --query 'Stacks[0].StackStatus' \
        --output text 2>/dev/null || echo NONE
}

# ------------------------------------------------------------------ 1. first deploy
printf '\n==> 1. %s\n' "${DEPLOY[*]}"
t0=$SECONDS
out1="$("${DEPLOY[@]}" 2>&1)"
rc=$?
printf '%s\n' "$out1" | sed 's/^/  | /'
[ "$rc" -eq 0 ] || fatal "first deploy exited $rc"
ok "first deploy exited 0 ($((SECONDS - t0))s)"
check "first deploy ran create-stack" has "$out1" 'create-stack .*first deploy'
check "stack is CREATE_COMPLETE" test "$(stack_status)" = CREATE_COMPLETE
load_stack
BUCKET="$(output BucketName)"
STREAM="$(output StreamName)"
INGEST="$(output IngestFunctionName)"
for k in BucketName StreamName IngestFunctionName TransformFunctionName RollupFunctionName \
    CompactFunctionName DeadLetterQueueUrl AlarmTopicArn; do
    v="$(output "$k")"
    if [ -n "$v" ] && [ "$v" != None ] && has "$out1" "^  $k +$v\$"; then
        ok "output $k printed: $v"
    else
        bad "output $k not printed (stack has '$v')"
    fi
done
check "IoT data endpoint printed" has "$out1" '^  IotDataEndpoint +[a-z0-9]+-ats\.iot\.us-east-1\.amazonaws\.com$'
check "example device-sim command printed" has "$out1" "device-sim --broker mqtts://.*:8883"

ARTIFACT_BUCKET=iotpipe-artifacts-123456789012-us-east-1
keys="$(awsm s3api list-objects-v2 --bucket "$ARTIFACT_BUCKET" --prefix "$STACK/" --query 'Contents[].Key' --output text 2>/dev/null | tr '\t' '\n')"
n_code="$(grep -cv '/template-' <<<"$keys")"
check "package uploaded the 4 zips (ingest, transform, rollup + compact, report) and the template to s3://$ARTIFACT_BUCKET/$STACK/ (code: $n_code)" \
    bash -c '[ "$1" -eq 4 ] && grep -q "/template-.*\.yaml$" <<<"$2"' _ "$n_code" "$keys"
params="$(param Architecture) $(param KinesisStreamMode) $(param KinesisShardCount) $(param TopicRuleName) $(param GlueDatabaseName)"
check "deploy.sh passed its parameters ($params)" \
    test "$params" = "arm64 ON_DEMAND 1 ${STACK//-/_}_telemetry ${STACK//-/_}"
# moto's Lambda keeps Runtime, Handler, MemorySize, Timeout and Environment from the template
# (not Architectures, LoggingConfig or DeadLetterConfig), and the code from the S3 upload.
cfg="$(awsm lambda get-function --function-name "$INGEST" --output text \
    --query 'Configuration.[Runtime, Handler, MemorySize, Timeout, Environment.Variables.IOTPIPE_SINK, Environment.Variables.IOTPIPE_STREAM_NAME, Environment.Variables.IOTPIPE_BUCKET, CodeSize]' 2>&1)"
code_size="${cfg##*$'\t'}"
check "ingest function: provided.al2023, bootstrap, 128 MB, 30 s, kinesis sink wired to the stream and bucket (${cfg%$'\t'*})" \
    test "${cfg%$'\t'*}" = "$(printf 'provided.al2023\tbootstrap\t128\t30\tkinesis\t%s\t%s' "$STREAM" "$BUCKET")"
check "ingest code is the uploaded dummy zip ($code_size bytes)" test "$code_size" -gt 0 2>/dev/null
# moto's Kinesis ignores StreamModeDetails and StreamEncryption: only existence and shards.
shards1="$(awsm kinesis describe-stream-summary --stream-name "$STREAM" \
    --query 'StreamDescriptionSummary.[StreamStatus, OpenShardCount]' --output text 2>&1)"
check "the stream exists ($shards1)" has "$shards1" '^ACTIVE'$'\t''[0-9]+$'

# ------------------------------------------------------------------ 2. same command, changed parameters
printf '\n==> 2. %s --param IngestMemorySize=256 --kinesis-mode provisioned --shards 2\n' "${DEPLOY[*]}"
t0=$SECONDS
out2="$("${DEPLOY[@]}" --param IngestMemorySize=256 --kinesis-mode provisioned --shards 2 2>&1)"
rc=$?
printf '%s\n' "$out2" | sed 's/^/  | /'
check "second deploy exited 0 ($((SECONDS - t0))s)" test "$rc" -eq 0
check "second deploy ran update-stack, not create-stack" \
    bash -c 'grep -q "update-stack .*stack is CREATE_COMPLETE" <<<"$1" && grep -q "^updated stack" <<<"$1" && ! grep -q create-stack <<<"$1"' _ "$out2"
check "stack is UPDATE_COMPLETE" test "$(stack_status)" = UPDATE_COMPLETE
load_stack
check "outputs printed again" has "$out2" "^  BucketName +$BUCKET\$"
check "the stack holds the new parameters" \
    test "$(param IngestMemorySize) $(param KinesisStreamMode) $(param KinesisShardCount)" = "256 PROVISIONED 2"
check "bucket, stream and function updated in place (same names)" \
    test "$(output BucketName) $(output StreamName) $(output IngestFunctionName)" = "$BUCKET $STREAM $INGEST"
mem="$(awsm lambda get-function-configuration --function-name "$INGEST" --query MemorySize --output text 2>&1)"
check "IngestMemorySize=256 reached the function ($mem)" test "$mem" = 256
mode2="$(awsm kinesis describe-stream-summary --stream-name "$STREAM" \
    --query 'StreamDescriptionSummary.[StreamStatus, OpenShardCount]' --output text 2>&1)"
check "the stream now has 2 shards ($mode2)" has "$mode2" $'\t''2$'


# ------------------------------------------------------------------ 2b. switch the ingest sink (conditions)
printf '\n==> 2b. %s --ingest-sink firehose\n' "${DEPLOY[*]}"
out2b="$("${DEPLOY[@]}" --ingest-sink firehose 2>&1)"
rc=$?
printf '%s\n' "$out2b" | sed 's/^/  | /'
check "deploy --ingest-sink firehose exited 0 with update-stack" \
    bash -c '[ "$1" -eq 0 ] && grep -q "^updated stack" <<<"$2"' _ "$rc" "$out2b"
load_stack
check "IngestSink=firehose: output IngestSink is firehose, no StreamName output" \
    test "$(output IngestSink)|$(output StreamName)" = "firehose|"
sink="$(awsm lambda get-function-configuration --function-name "$INGEST" --output text \
    --query 'Environment.Variables.[IOTPIPE_SINK, IOTPIPE_STREAM_NAME]' 2>&1)"
# The delivery stream is one of the resources moto cannot create: its name is the placeholder.
check "ingest now writes to the Firehose stream ($sink)" \
    test "$sink" = "$(printf 'firehose\tmoto-skipped-TelemetryDeliveryStream')"
# Not checked: that the Kinesis stream (Condition: UseKinesisSink) is deleted. moto's update
# diffs the template's resource names, not their conditions, so it keeps the stream; AWS
# deletes it.
echo "note: moto keeps the Kinesis stream whose condition turned false (AWS deletes it); not checked"

# ------------------------------------------------------------------ 2c/2d. the other topologies
# Each on a stack of its own, created then destroyed: moto's update evaluates a template's
# conditions only at create time, so switching the topology of the stack above would prove
# nothing (AWS re-evaluates them on update).
MAIN_STACK="$STACK"
# deploy_topology T — creates stack $MAIN_STACK-T with --topology T; leaves STACK set to it.
deploy_topology() {
    STACK="$MAIN_STACK-$1"
    printf '\n==> %s --stack-name %s --topology %s\n' "${DEPLOY[*]}" "$STACK" "$1"
    local out rc
    out="$("${DEPLOY[@]}" --stack-name "$STACK" --topology "$1" 2>&1)"
    rc=$?
    printf '%s\n' "$out" | sed 's/^/  | /'
    check "deploy --topology $1 exited 0 with create-stack" \
        bash -c '[ "$1" -eq 0 ] && grep -q "create-stack .*first deploy" <<<"$2"' _ "$rc" "$out"
    load_stack
}
destroy_topology() {
    bash infra/destroy.sh --stack-name "$STACK" --yes --force-empty-bucket --delete-artifacts \
        --endpoint-url "$ENDPOINT" >/dev/null 2>&1
    check "stack $STACK destroyed" fails awsm cloudformation describe-stacks --stack-name "$STACK"
    rm -rf "$ROOT/target/iotpipe-infra/$STACK"
    STACK="$MAIN_STACK"
}

deploy_topology kinesis
K_INGEST="$(output IngestFunctionName)"
check "Topology=kinesis: outputs Topology, StreamName and IngestFunctionName" \
    bash -c '[ "$1" = kinesis ] && [ -n "$2" ] && [ -n "$3" ]' _ "$(output Topology)" "$(output StreamName)" "$K_INGEST"
esm="$(awsm lambda list-event-source-mappings --function-name "$K_INGEST" --output text \
    --query 'EventSourceMappings[].[BatchSize, MaximumBatchingWindowInSeconds, BisectBatchOnFunctionError, FunctionResponseTypes[0]]' 2>&1)"
check "ingest reads the raw stream through an event-source mapping ($esm)" \
    test "$esm" = "$(printf '500\t5\tTrue\tReportBatchItemFailures')"
sink="$(awsm lambda get-function-configuration --function-name "$K_INGEST" --output text \
    --query 'Environment.Variables.[IOTPIPE_SINK, IOTPIPE_EVENT]' 2>&1)"
check "ingest takes Kinesis batches and writes the DirectPut Firehose stream ($sink)" \
    test "$sink" = "$(printf 'firehose\tkinesis')"
destroy_topology

deploy_topology firehose
check "Topology=firehose: output Topology, no StreamName or IngestFunctionName output" \
    test "$(output Topology)|$(output StreamName)|$(output IngestFunctionName)" = "firehose||"
tenv="$(awsm lambda get-function-configuration --function-name "$(output TransformFunctionName)" --output text \
    --query 'Environment.Variables.[IOTPIPE_INPUT, IOTPIPE_QUARANTINE_PREFIX]' 2>&1)"
check "the transform reads raw payloads and quarantines ($tenv)" \
    test "$tenv" = "$(printf 'raw\tquarantine/')"
n_fn="$(awsm lambda list-functions --query "length(Functions[?starts_with(FunctionName, '$STACK-')])" --output text 2>&1)"
check "no ingest function: 5 functions in the stack ($n_fn)" test "$n_fn" = 5
destroy_topology
echo "note: moto skips the topic rule (Firehose / Kinesis action) and the delivery stream (see above)"

# ------------------------------------------------------------------ 3. destroy refuses a non-empty bucket
printf '\n==> 3. infra/destroy.sh --stack-name %s --yes   (the data bucket holds an object)\n' "$STACK"
printf 'x' | awsm s3 cp - "s3://$BUCKET/telemetry/dt=2026-01-01/hour=00/smoke.parquet" >/dev/null ||
    bad "could not put an object into s3://$BUCKET"
out3="$(bash infra/destroy.sh --stack-name "$STACK" --yes --endpoint-url "$ENDPOINT" 2>&1)"
rc=$?
printf '%s\n' "$out3" | sed 's/^/  | /'
check "destroy.sh refused with exit 3 (got $rc)" test "$rc" -eq 3
check "it says the bucket is not empty and how to proceed" \
    bash -c 'grep -q "is not empty" <<<"$1" && grep -q -- "--force-empty-bucket" <<<"$1"' _ "$out3"
check "the stack is untouched ($(stack_status))" test "$(stack_status)" = UPDATE_COMPLETE
check "the object is still there" bash -c '"$@" >/dev/null' _ "$AWS_BIN" --endpoint-url "$ENDPOINT" --region us-east-1 \
    s3api head-object --bucket "$BUCKET" --key "telemetry/dt=2026-01-01/hour=00/smoke.parquet"

# ------------------------------------------------------------------ 4. destroy when told to
printf '\n==> 4. infra/destroy.sh --stack-name %s --yes --force-empty-bucket --delete-artifacts\n' "$STACK"
out4="$(bash infra/destroy.sh --stack-name "$STACK" --yes --force-empty-bucket --delete-artifacts --endpoint-url "$ENDPOINT" 2>&1)"
rc=$?
printf '%s\n' "$out4" | sed 's/^/  | /'
check "destroy.sh --force-empty-bucket exited 0 (got $rc)" test "$rc" -eq 0
check "the stack is gone" fails awsm cloudformation describe-stacks --stack-name "$STACK"
check "the data bucket is gone" fails awsm s3api head-bucket --bucket "$BUCKET"
left="$(awsm s3api list-objects-v2 --bucket "$ARTIFACT_BUCKET" --prefix "$STACK/" --query 'length(Contents || `[]`)' --output text 2>&1)"
check "--delete-artifacts removed s3://$ARTIFACT_BUCKET/$STACK/ (keys left: $left)" test "$left" = 0
out5="$(bash infra/destroy.sh --stack-name "$STACK" --yes --endpoint-url "$ENDPOINT" 2>&1)"
rc=$?
check "a second destroy finds nothing to delete and exits 0" \
    bash -c '[ "$1" -eq 0 ] && grep -q "does not exist" <<<"$2"' _ "$rc" "$out5"

finish
