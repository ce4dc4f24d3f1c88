#!/usr/bin/env bash
# Fetches the dashboard the report function writes under s3://<bucket>/dashboard/, with
# your own AWS credentials: the bucket stays private (no public access, no website
# hosting). Opens nothing itself; prints what to open.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: infra/dashboard.sh --stack-name NAME [--out DIR] [--presign SECONDS]

Copies the dashboard (s3://<bucket>/dashboard/, rendered every 5 minutes by the stack's
report function) to DIR (default ./dashboard-site) with `aws s3 sync`, then prints the
path of its index.html to open in a browser. The pages are self-contained (HTML + SVG) and
link to each other relatively, so the copy works offline.

Options:
  --stack-name NAME    the stack deployed by infra/deploy.sh (its BucketName output)
  --out DIR            where to copy the site (default ./dashboard-site)
  --presign SECONDS    instead of copying, print presigned URLs (valid SECONDS) of every
                       page, to share read access for a while without AWS credentials;
                       links between pages need the copy, so open each URL directly
  --endpoint-url URL   an AWS-compatible endpoint (or AWS_ENDPOINT_URL)
  -h, --help           this help

Needs the AWS CLI and credentials (AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)
and AWS_REGION, like infra/deploy.sh.
USAGE
}

STACK="" OUT="./dashboard-site" PRESIGN="" ENDPOINT=()
while [ $# -gt 0 ]; do
    case "$1" in
        --stack-name) STACK="${2:?--stack-name needs a value}"; shift 2 ;;
        --out) OUT="${2:?--out needs a value}"; shift 2 ;;
        --presign) PRESIGN="${2:?--presign needs seconds}"; shift 2 ;;
        --endpoint-url) ENDPOINT=(--endpoint-url "${2:?--endpoint-url needs a URL}"); shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$STACK" ] || { echo "give --stack-name NAME (see --help)" >&2; exit 2; }
if [ ${#ENDPOINT[@]} -eq 0 ] && [ -n "${AWS_ENDPOINT_URL:-}" ]; then
    ENDPOINT=(--endpoint-url "$AWS_ENDPOINT_URL")
fi
command -v aws >/dev/null || { echo "the AWS CLI is missing: pip install awscli" >&2; exit 2; }

BUCKET="$(aws "${ENDPOINT[@]}" cloudformation describe-stacks --stack-name "$STACK" \
    --query "Stacks[0].Outputs[?OutputKey=='BucketName'].OutputValue" --output text)"
if [ -z "$BUCKET" ] || [ "$BUCKET" = "None" ]; then
    echo "stack $STACK has no BucketName output: deploy it with infra/deploy.sh" >&2
    exit 1
fi

if [ -n "$PRESIGN" ]; then
    KEYS="$(aws "${ENDPOINT[@]}" s3api list-objects-v2 --bucket "$BUCKET" --prefix dashboard/ \
        --query 'Contents[].Key' --output text)"
    if [ -z "$KEYS" ] || [ "$KEYS" = "None" ]; then
        echo "no dashboard yet in s3://$BUCKET/dashboard/: the report function runs every 5 minutes" >&2
        exit 1
    fi
    for key in $KEYS; do
        printf '%s\t%s\n' "$key" "$(aws "${ENDPOINT[@]}" s3 presign "s3://$BUCKET/$key" --expires-in "$PRESIGN")"
    done
    exit 0
fi

aws "${ENDPOINT[@]}" s3 sync --delete "s3://$BUCKET/dashboard/" "$OUT" >&2
[ -f "$OUT/index.html" ] || {
    echo "no dashboard yet in s3://$BUCKET/dashboard/: the report function runs every 5 minutes" >&2
    exit 1
}
echo "open $OUT/index.html"
