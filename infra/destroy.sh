#!/usr/bin/env bash
# Delete the iot-pipeline stack. Refuses while the data bucket holds objects unless
# --force-empty-bucket is given (then every object version is deleted first).
# Honours AWS_PROFILE and AWS_REGION, and AWS_ENDPOINT_URL (an AWS-compatible server; the
# test suite's smoke deploy uses moto).
#
# JMESPath literals are backtick-quoted inside single-quoted --query strings:
# shellcheck disable=SC2016
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: infra/destroy.sh [options]

Deletes the CloudFormation stack made by infra/deploy.sh and waits for it to go.

  --stack-name NAME      stack to delete (default: iot-pipeline)
  --region REGION        AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, the profile's)
  --force-empty-bucket   delete every object (all versions) in the stack's data bucket first;
                         without it a non-empty bucket stops the script before anything is deleted
  --delete-artifacts     also delete the packaged code under s3://<artifact bucket>/<stack>/
  --artifact-bucket NAME artifact bucket (default: iotpipe-artifacts-ACCOUNT-REGION)
  --endpoint-url URL     AWS-compatible endpoint for every call (same as AWS_ENDPOINT_URL)
  -y, --yes              do not ask for confirmation (required when stdin is not a terminal)
  -h, --help             this help

The device policy is detached from every certificate first (IoT refuses to delete an attached
policy). Things and certificates made by infra/provision-devices.sh are not stack resources:
remove them with  infra/provision-devices.sh --delete --out ./certs
EOF
}

die() {
    echo "destroy.sh: $*" >&2
    exit 1
}

STACK_NAME="iot-pipeline"
REGION=""
FORCE_EMPTY=0
DELETE_ARTIFACTS=0
ARTIFACT_BUCKET=""
YES=0

need_value() { if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi; }

while [ "$#" -gt 0 ]; do
    case "$1" in
    --stack-name) need_value "$@"; STACK_NAME="$2"; shift ;;
    --region) need_value "$@"; REGION="$2"; shift ;;
    --force-empty-bucket) FORCE_EMPTY=1 ;;
    --delete-artifacts) DELETE_ARTIFACTS=1 ;;
    --artifact-bucket) need_value "$@"; ARTIFACT_BUCKET="$2"; shift ;;
    --endpoint-url) need_value "$@"; export AWS_ENDPOINT_URL="$2"; shift ;;
    -y | --yes) YES=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

command -v aws >/dev/null 2>&1 || die "the AWS CLI is required"
[ -n "$REGION" ] || REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
[ -n "$REGION" ] || REGION="$(aws configure get region 2>/dev/null || true)"
[ -n "$REGION" ] || die "no AWS region: pass --region, or set AWS_REGION (or a region in the AWS_PROFILE profile)"
export AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION"

if ! ACCOUNT="$(aws sts get-caller-identity --query Account --output text 2>&1)"; then
    echo "$ACCOUNT" >&2
    die "no usable AWS credentials (aws sts get-caller-identity failed). Set AWS_PROFILE=<profile> or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and AWS_REGION=<region>. AWS_PROFILE=${AWS_PROFILE:-<unset>} AWS_REGION=$REGION"
fi

if ! aws cloudformation describe-stacks --stack-name "$STACK_NAME" >/dev/null 2>&1; then
    echo "stack $STACK_NAME does not exist in $ACCOUNT/$REGION: nothing to delete"
    exit 0
fi

output() {
    aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
        --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}
BUCKET="$(output BucketName)"
POLICY="$(output DevicePolicyName)"
[ "$BUCKET" = None ] && BUCKET=""
[ "$POLICY" = None ] && POLICY=""

# Objects, object versions or delete markers left in the bucket make the stack delete fail.
bucket_has_content() {
    local n
    n="$(aws s3api list-object-versions --bucket "$BUCKET" --max-items 1 \
        --query 'length([Versions[0], DeleteMarkers[0]][?@ != `null`])' --output text 2>/dev/null || echo 0)"
    [ "$n" != 0 ] && [ "$n" != None ]
}

if [ -n "$BUCKET" ] && aws s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1 && bucket_has_content; then
    if [ "$FORCE_EMPTY" != 1 ]; then
        echo "destroy.sh: s3://$BUCKET is not empty (telemetry, stats, quarantine or errors)." >&2
        echo "  Keep the data: copy it first, e.g. aws s3 sync s3://$BUCKET ./backup" >&2
        echo "  Delete it:     infra/destroy.sh --stack-name $STACK_NAME --force-empty-bucket" >&2
        exit 3
    fi
fi

if [ "$YES" != 1 ]; then
    [ -t 0 ] || die "refusing to delete without --yes when stdin is not a terminal"
    printf 'Delete stack %s in %s/%s%s? Type the stack name to confirm: ' "$STACK_NAME" "$ACCOUNT" "$REGION" \
        "$([ "$FORCE_EMPTY" = 1 ] && [ -n "$BUCKET" ] && echo " AND every object in s3://$BUCKET")"
    read -r answer
    [ "$answer" = "$STACK_NAME" ] || die "not confirmed"
fi

if [ "$FORCE_EMPTY" = 1 ] && [ -n "$BUCKET" ] && aws s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1; then
    echo "==> emptying s3://$BUCKET (all versions)"
    # Stop new writes racing the delete: disable the topic rule first.
    rule="$(output TopicRuleName)"
    if [ -n "$rule" ] && [ "$rule" != None ]; then
        aws iot disable-topic-rule --rule-name "$rule" 2>/dev/null || true
    fi
    while bucket_has_content; do
        batch="$(aws s3api list-object-versions --bucket "$BUCKET" --max-items 500 --output json \
            --query '{Objects: [Versions[].{Key: Key, VersionId: VersionId}, DeleteMarkers[].{Key: Key, VersionId: VersionId}][] | [?@ != `null`], Quiet: `true`}')"
        aws s3api delete-objects --bucket "$BUCKET" --delete "$batch" >/dev/null
    done
fi

if [ -n "$POLICY" ]; then
    targets="$(aws iot list-targets-for-policy --policy-name "$POLICY" --query 'targets[]' --output text 2>/dev/null || true)"
    for t in $targets; do
        [ "$t" = None ] && continue
        echo "==> detaching IoT policy $POLICY from $t"
        aws iot detach-policy --policy-name "$POLICY" --target "$t"
    done
fi

echo "==> aws cloudformation delete-stack --stack-name $STACK_NAME"
aws cloudformation delete-stack --stack-name "$STACK_NAME"
if ! aws cloudformation wait stack-delete-complete --stack-name "$STACK_NAME"; then
    echo "destroy.sh: the stack did not delete cleanly; failed resources:" >&2
    aws cloudformation describe-stack-events --stack-name "$STACK_NAME" \
        --query 'StackEvents[?ResourceStatus==`DELETE_FAILED`].[LogicalResourceId,ResourceStatusReason]' \
        --output text >&2 || true
    exit 1
fi
echo "stack $STACK_NAME deleted"

if [ "$DELETE_ARTIFACTS" = 1 ]; then
    [ -n "$ARTIFACT_BUCKET" ] || ARTIFACT_BUCKET="iotpipe-artifacts-$ACCOUNT-$REGION"
    echo "==> aws s3 rm s3://$ARTIFACT_BUCKET/$STACK_NAME/ --recursive"
    aws s3 rm "s3://$ARTIFACT_BUCKET/$STACK_NAME/" --recursive || true
fi
echo "Left in place: IoT things/certificates (infra/provision-devices.sh --delete) and the artifact bucket."
