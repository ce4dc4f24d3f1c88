#!/usr/bin/env bash
# The whole iot-pipeline test suite, in one command (CI runs it from a fresh clone as root):
#
#   bash tests/run.sh
#
# 1. installs and starts the test services (tests/setup/services.sh: mosquitto plain + mTLS
#    and a moto server (AWS APIs) on loopback; python venvs with pyarrow + duckdb, with moto,
#    and with cargo-lambda; a test CA) and stops them on exit, even on failure;
# 2. cargo fmt --check; cargo build --bins; cargo clippy -D warnings; cargo doc; cargo test;
#    the Lambda binaries invoked under cargo lambda watch (tests/lambda/invoke.py);
# 3. bash infra/check.sh, when present, and the smoke deploy of infra/deploy.sh and
#    infra/destroy.sh against moto's CloudFormation (infra/smoke-moto.sh, about a minute).
#
# Every step runs even when an earlier one failed (but nothing after a failed build); the
# exit status is non-zero when any step failed, and the summary names the failed steps.
#
# Environment:
#   CARGO_TARGET_DIR     build cache, default ~/.cache/iot-pipeline/target (outside the clone)
#   IOTPIPE_SKIP_LINT=1  skip cargo fmt and cargo clippy, for quick local iterations
#                        (CI and the default run everything)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/iot-pipeline/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

START=$SECONDS
FAILED_STEPS=()

step() { printf '\n==> %s\n' "$*"; }

# run_step NAME CMD... — runs CMD, records NAME as failed when it exits non-zero.
run_step() {
    local name="$1" t0=$SECONDS rc=0
    shift
    step "$name"
    "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        printf -- '--> FAILED: %s (exit %s, %ss)\n' "$name" "$rc" "$((SECONDS - t0))"
        FAILED_STEPS+=("$name")
    else
        printf -- '--> ok: %s (%ss)\n' "$name" "$((SECONDS - t0))"
    fi
    return 0
}

# shellcheck source=tests/setup/services.sh
source tests/setup/services.sh

cleanup() {
    local rc=$?
    # Only what this run started: brokers that were already up (services_up by hand) and
    # reused stay up.
    if [ -n "${SERVICES_STARTED_PIDS:-}" ]; then
        step "stopping test services"
        # shellcheck disable=SC2086  # a list of PIDs
        services_down $SERVICES_STARTED_PIDS || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "test services (tests/setup/services.sh)"
services_up
export IOTPIPE_TEST_PYTHON IOTPIPE_TEST_CERTS IOTPIPE_TEST_MQTT IOTPIPE_TEST_MQTTS IOTPIPE_TEST_MOTO \
    IOTPIPE_TEST_CARGO_LAMBDA IOTPIPE_TEST_AWS IOTPIPE_TEST_CHROMIUM

step "toolchain"
cargo --version
rustc --version
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

if [ "${IOTPIPE_SKIP_LINT:-0}" = 1 ]; then
    step "cargo fmt: skipped (IOTPIPE_SKIP_LINT=1)"
else
    run_step "cargo fmt --all --check" cargo fmt --all --check
fi

# The e2e tests run $CARGO_TARGET_DIR/debug/iotpipe and device-sim.
run_step "cargo build --workspace --bins" cargo build --workspace --bins
build_ok=1
for s in "${FAILED_STEPS[@]}"; do
    [[ "$s" == "cargo build"* ]] && build_ok=0
done

if [ "$build_ok" = 1 ]; then
    if [ "${IOTPIPE_SKIP_LINT:-0}" = 1 ]; then
        step "cargo clippy: skipped (IOTPIPE_SKIP_LINT=1)"
    else
        run_step "cargo clippy --workspace --all-targets -- -D warnings" \
            cargo clippy --workspace --all-targets -- -D warnings
        run_step "cargo doc --workspace --no-deps (warnings are errors)" \
            env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
    fi

    run_step "cargo test --workspace --no-fail-fast" cargo test --workspace --no-fail-fast

    # The Lambda binaries built above, as processes under cargo lambda's Runtime API
    # emulator, invoked with the fixture events (about 2 s; moto's venv has boto3).
    run_step "Lambda binaries under cargo lambda watch (tests/lambda/invoke.py)" \
        "$_SVC_MOTO_VENV/bin/python" tests/lambda/invoke.py
else
    step "cargo clippy, cargo test, Lambda invocations: skipped (the build failed)"
fi

if [ -f infra/check.sh ]; then
    run_step "infra/check.sh" bash infra/check.sh
else
    step "infra/check.sh: not present, skipped"
fi

if [ -f infra/smoke-moto.sh ]; then
    run_step "smoke deploy of infra/deploy.sh + destroy.sh against moto (infra/smoke-moto.sh)" \
        bash infra/smoke-moto.sh
fi

step "summary ($((SECONDS - START))s)"
if [ "${#FAILED_STEPS[@]}" -gt 0 ]; then
    printf 'FAILED step: %s\n' "${FAILED_STEPS[@]}"
    exit 1
fi
echo "all steps passed"
