#!/usr/bin/env bash
# Create (or --delete) N IoT things with certificates attached to the stack's device policy.
# Keys are written under <out>/<device_id>/ and never leave this machine; <out> gets a
# .gitignore of its own so that the keys cannot be committed by accident.
# Honours AWS_PROFILE and AWS_REGION.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: infra/provision-devices.sh [options]

For each device sensor-000001 .. sensor-<N> (thing name = MQTT client id = device_id):
  aws iot create-thing, create-keys-and-certificate --set-as-active,
  attach-policy <stack DevicePolicyName>, attach-thing-principal
and writes <out>/<device_id>/{cert.pem,private.key,public.key,certificate.arn}.
Devices already provisioned in <out> are skipped, so a re-run only adds the missing ones.

  --count N           number of devices (default: 10)
  --prefix P          device id prefix (default: sensor-); ids are P%06d from --start
  --start K           first index (default: 1)
  --out DIR           where keys go (default: ./certs)
  --stack-name NAME   stack whose DevicePolicyName output is attached (default: iot-pipeline)
  --policy-name NAME  attach this IoT policy instead of the stack's
  --region REGION     AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, the profile's)
  --dry-run           print the plan; no AWS call, nothing written
  --delete            undo: for every <out>/<device_id>/certificate.arn detach the policy and
                      the thing, deactivate and delete the certificate, delete the thing and keys
  -y, --yes           do not ask before --delete
  -h, --help          this help

The AWS IoT server certificate chains to Amazon Root CA 1. Devices need it as their CA file:
it is copied to <out>/AmazonRootCA1.pem from the system store when present
(/etc/ssl/certs/Amazon_Root_CA_1.pem on Debian/Ubuntu), otherwise download it from
https://www.amazontrust.com/repository/AmazonRootCA1.pem
EOF
}

die() {
    echo "provision-devices.sh: $*" >&2
    exit 1
}

COUNT=10
PREFIX="sensor-"
START=1
OUT="./certs"
STACK_NAME="iot-pipeline"
POLICY=""
REGION=""
DRY_RUN=0
DELETE=0
YES=0

need_value() { if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi; }

while [ "$#" -gt 0 ]; do
    case "$1" in
    --count) need_value "$@"; COUNT="$2"; shift ;;
    --prefix) need_value "$@"; PREFIX="$2"; shift ;;
    --start) need_value "$@"; START="$2"; shift ;;
    --out) need_value "$@"; OUT="$2"; shift ;;
    --stack-name) need_value "$@"; STACK_NAME="$2"; shift ;;
    --policy-name) need_value "$@"; POLICY="$2"; shift ;;
    --region) need_value "$@"; REGION="$2"; shift ;;
    --dry-run) DRY_RUN=1 ;;
    --delete) DELETE=1 ;;
    -y | --yes) YES=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

[[ "$COUNT" =~ ^[0-9]+$ ]] || die "--count must be a whole number"
[[ "$START" =~ ^[0-9]+$ ]] || die "--start must be a whole number"
[[ "$PREFIX" =~ ^[A-Za-z0-9_:-]*$ ]] || die "--prefix may only use [A-Za-z0-9_:-] (an IoT thing name)"

device_ids() {
    local i
    for ((i = START; i < START + COUNT; i++)); do printf '%s%06d\n' "$PREFIX" "$i"; done
}

ROOT_CA_SYSTEM="/etc/ssl/certs/Amazon_Root_CA_1.pem"

if [ "$DRY_RUN" = 1 ]; then
    echo "Dry run: no AWS call is made and nothing is written."
    if [ "$DELETE" = 1 ]; then
        echo "Would delete every device with a certificate.arn under $OUT/ (detach policy and thing,"
        echo "deactivate and delete the certificate, delete the thing, remove the keys)."
        exit 0
    fi
    echo "Policy:  ${POLICY:-DevicePolicyName output of stack $STACK_NAME}"
    echo "Keys:    $OUT/<device_id>/{cert.pem,private.key,public.key,certificate.arn} (mode 600, $OUT/.gitignore = *)"
    if [ -r "$ROOT_CA_SYSTEM" ]; then
        echo "Root CA: $OUT/AmazonRootCA1.pem (copied from $ROOT_CA_SYSTEM)"
    else
        echo "Root CA: not in the system store; save https://www.amazontrust.com/repository/AmazonRootCA1.pem as $OUT/AmazonRootCA1.pem"
    fi
    echo "Devices ($COUNT):"
    shown=0
    while read -r id; do
        if [ "$shown" -ge 10 ]; then
            echo "  ... ($COUNT devices in all)"
            break
        fi
        echo "  $id: aws iot create-thing --thing-name $id; create-keys-and-certificate --set-as-active;"
        echo "  ${id//?/ }  attach-policy; attach-thing-principal"
        shown=$((shown + 1))
    done < <(COUNT=$((COUNT < 11 ? COUNT : 11)) device_ids)
    exit 0
fi

command -v aws >/dev/null 2>&1 || die "the AWS CLI is required"
[ -n "$REGION" ] || REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
[ -n "$REGION" ] || REGION="$(aws configure get region 2>/dev/null || true)"
[ -n "$REGION" ] || die "no AWS region: pass --region, or set AWS_REGION (or a region in the AWS_PROFILE profile)"
export AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION"

if ! ACCOUNT="$(aws sts get-caller-identity --query Account --output text 2>&1)"; then
    echo "$ACCOUNT" >&2
    die "no usable AWS credentials (aws sts get-caller-identity failed). Set AWS_PROFILE=<profile> or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and AWS_REGION=<region>. AWS_PROFILE=${AWS_PROFILE:-<unset>} AWS_REGION=$REGION"
fi

if [ -z "$POLICY" ]; then
    POLICY="$(aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
        --query "Stacks[0].Outputs[?OutputKey=='DevicePolicyName'].OutputValue" --output text 2>/dev/null || true)"
    if [ -z "$POLICY" ] || [ "$POLICY" = None ]; then die "stack $STACK_NAME has no DevicePolicyName output in $ACCOUNT/$REGION: deploy first (infra/deploy.sh) or pass --policy-name"; fi
fi

umask 077

if [ "$DELETE" = 1 ]; then
    if [ "$YES" != 1 ]; then
        [ -t 0 ] || die "refusing to --delete without --yes when stdin is not a terminal"
        read -r -p "Delete every device under $OUT (things, certificates, keys)? [y/N] " answer
        [ "$answer" = y ] || [ "$answer" = Y ] || die "not confirmed"
    fi
    shopt -s nullglob
    for arn_file in "$OUT"/*/certificate.arn; do
        dir="$(dirname "$arn_file")"
        id="$(basename "$dir")"
        arn="$(cat "$arn_file")"
        cert_id="${arn##*/}"
        echo "==> $id"
        aws iot detach-policy --policy-name "$POLICY" --target "$arn" 2>/dev/null || true
        aws iot detach-thing-principal --thing-name "$id" --principal "$arn" 2>/dev/null || true
        aws iot update-certificate --certificate-id "$cert_id" --new-status INACTIVE 2>/dev/null || true
        # Detaching is eventually consistent; retry the delete a few times.
        for _ in 1 2 3 4 5; do
            aws iot delete-certificate --certificate-id "$cert_id" 2>/dev/null && break
            sleep 2
        done
        aws iot delete-thing --thing-name "$id" 2>/dev/null || true
        rm -rf "$dir"
    done
    echo "done"
    exit 0
fi

mkdir -p "$OUT"
[ -e "$OUT/.gitignore" ] || printf '# device keys: never commit\n*\n' >"$OUT/.gitignore"
if [ ! -s "$OUT/AmazonRootCA1.pem" ]; then
    if [ -r "$ROOT_CA_SYSTEM" ]; then
        cp "$ROOT_CA_SYSTEM" "$OUT/AmazonRootCA1.pem"
    else
        echo "note: save https://www.amazontrust.com/repository/AmazonRootCA1.pem as $OUT/AmazonRootCA1.pem" >&2
    fi
fi

made=0
skipped=0
while read -r id; do
    dir="$OUT/$id"
    if [ -s "$dir/certificate.arn" ] && [ -s "$dir/private.key" ]; then
        skipped=$((skipped + 1))
        continue
    fi
    mkdir -p "$dir"
    aws iot describe-thing --thing-name "$id" >/dev/null 2>&1 ||
        aws iot create-thing --thing-name "$id" --attribute-payload "attributes={fleet=simulated}" >/dev/null
    arn="$(aws iot create-keys-and-certificate --set-as-active \
        --certificate-pem-outfile "$dir/cert.pem" \
        --public-key-outfile "$dir/public.key" \
        --private-key-outfile "$dir/private.key" \
        --query certificateArn --output text)"
    aws iot attach-policy --policy-name "$POLICY" --target "$arn"
    aws iot attach-thing-principal --thing-name "$id" --principal "$arn"
    printf '%s\n' "$arn" >"$dir/certificate.arn"
    made=$((made + 1))
    echo "  $id"
done < <(device_ids)

ENDPOINT="$(aws iot describe-endpoint --endpoint-type iot:Data-ATS --query endpointAddress --output text)"
echo "provisioned $made device(s), $skipped already present, policy $POLICY, keys in $OUT/"
echo "endpoint: mqtts://$ENDPOINT:8883 (client id = thing name = device_id; CA $OUT/AmazonRootCA1.pem)"
