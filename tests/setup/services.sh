# shellcheck shell=bash
# Test services for iot-pipeline: installs what the tests need and starts two mosquitto
# brokers and a moto server (AWS APIs) on loopback. Sourced by tests/run.sh; also usable by
# hand:
#
#   source tests/setup/services.sh && services_up     # install (once), start, export env
#   cargo test --workspace                            # in the same shell
#   services_down                                     # stop what services_up started
#
# In another shell: `source .test-env/services.env` gives the same environment.
#
# services_up exports:
#   IOTPIPE_TEST_PYTHON  venv python with pyarrow + duckdb (for tests/py/*.py)
#   IOTPIPE_TEST_CERTS   dir with ca.pem ca.key server.pem server.key client.pem client.key
#   IOTPIPE_TEST_MQTT    mqtt://127.0.0.1:PORT   plain listener, anonymous
#   IOTPIPE_TEST_MQTTS   mqtts://127.0.0.1:PORT  mutual TLS (client cert signed by ca.pem)
#   IOTPIPE_TEST_MOTO    http://127.0.0.1:PORT   moto server: Kinesis, Firehose, S3, ... (any
#                        region, any credentials; POST /moto-api/reset clears its state)
#   IOTPIPE_TEST_CARGO_LAMBDA  the cargo-lambda executable (`$IOTPIPE_TEST_CARGO_LAMBDA lambda
#                        watch ...`), for tests/lambda/invoke.py
#   IOTPIPE_TEST_AWS     the pinned AWS CLI (`aws`), for infra/smoke-moto.sh
#   IOTPIPE_TEST_CHROMIUM  Debian's chromium, for the dashboard's headless browser test
#
# Idempotent: a second services_up reuses brokers and moto while they are still running
# (checked by PID, command line and port); installs, the venvs and the certificates are
# reused when valid.
# Everything lives under .test-env/ (git-ignored). Nothing binds anything but 127.0.0.1.
#
# Safe to source into an interactive shell: no `set -e`, no `exit`; functions return
# non-zero on failure.

_SVC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
_SVC_ENV="$_SVC_ROOT/.test-env"
_SVC_VENV="$_SVC_ENV/venv"
_SVC_CERTS="$_SVC_ENV/certs"
_SVC_MQ="$_SVC_ENV/mosquitto"
_SVC_PIDS="$_SVC_ENV/pids"
_SVC_ENVFILE="$_SVC_ENV/services.env"
# Pinned so that a re-run finds what it installed and CI sees what a developer sees.
_SVC_PY_SPEC="pyarrow==26.0.1 duckdb==2.0.1"
# moto gets a venv of its own: installed next to other tool sets, its boto3 pins break.
_SVC_MOTO_VENV="$_SVC_ENV/moto-venv"
_SVC_MOTO_SPEC="moto[server]==5.2.5"
_SVC_MOTO="$_SVC_ENV/moto"
# cargo-lambda (its own venv too): the Lambda Runtime API emulator for tests/lambda/.
_SVC_CL_VENV="$_SVC_ENV/cargo-lambda"
_SVC_CL_SPEC="cargo-lambda==1.9.2"
# The AWS CLI (its own venv: it pins botocore exactly), for infra/smoke-moto.sh, which runs
# infra/deploy.sh and infra/destroy.sh against moto.
_SVC_AWS_VENV="$_SVC_ENV/awscli"
_SVC_AWS_SPEC="awscli==1.45.11"
# PIDs started by the latest services_up in this shell (empty when it reused running ones);
# run.sh stops only these.
SERVICES_STARTED_PIDS="${SERVICES_STARTED_PIDS:-}"

_svc_log() { printf '[services] %s\n' "$*" >&2; }
_svc_err() { printf '[services] ERROR: %s\n' "$*" >&2; }

# --- packages -----------------------------------------------------------------------------
_svc_packages() {
    if command -v mosquitto >/dev/null && command -v mosquitto_pub >/dev/null \
        && command -v mosquitto_sub >/dev/null && command -v openssl >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        _svc_err "mosquitto/mosquitto-clients/openssl missing and not root: install them"
        return 1
    fi
    _svc_log "apt-get install mosquitto mosquitto-clients openssl"
    # Only refresh the lists when the server or openssl is missing (the slow part).
    if ! command -v mosquitto >/dev/null || ! command -v openssl >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update \
            >/dev/null || { _svc_err "apt-get update failed"; return 1; }
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=300 mosquitto mosquitto-clients openssl >/dev/null \
        || { _svc_err "apt-get install failed"; return 1; }
    command -v mosquitto >/dev/null || { _svc_err "mosquitto not on PATH after install"; return 1; }
}

# --- python venv --------------------------------------------------------------------------
_svc_venv() {
    local py="$_SVC_VENV/bin/python"
    if [ -x "$py" ] && [ "$(cat "$_SVC_VENV/.spec" 2>/dev/null)" = "$_SVC_PY_SPEC" ] \
        && "$py" -c 'import pyarrow, pyarrow.parquet, duckdb' 2>/dev/null; then
        export IOTPIPE_TEST_PYTHON="$py"
        return 0
    fi
    # A venv whose interpreter no longer runs (e.g. the base python moved) is rebuilt.
    if [ -e "$_SVC_VENV" ] && ! "$py" -c 'import sys' 2>/dev/null; then
        rm -rf "$_SVC_VENV"
    fi
    if [ ! -x "$py" ]; then
        _svc_log "python3 -m venv ${_SVC_VENV#"$_SVC_ROOT"/}"
        python3 -m venv "$_SVC_VENV" || { _svc_err "python3 -m venv failed"; return 1; }
    fi
    _svc_log "pip install $_SVC_PY_SPEC"
    # shellcheck disable=SC2086  # the spec is a word list on purpose
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip install -q $_SVC_PY_SPEC \
        || { _svc_err "pip install failed"; return 1; }
    "$py" -c 'import pyarrow, pyarrow.parquet, duckdb' \
        || { _svc_err "pyarrow/duckdb do not import after install"; return 1; }
    printf '%s\n' "$_SVC_PY_SPEC" >"$_SVC_VENV/.spec"
    export IOTPIPE_TEST_PYTHON="$py"
}

# --- certificates -------------------------------------------------------------------------
_svc_certs_valid() {
    local d="$_SVC_CERTS" f
    for f in ca.pem ca.key server.pem server.key client.pem client.key; do
        [ -s "$d/$f" ] || return 1
    done
    for f in ca server client; do
        # Still valid for at least a day.
        openssl x509 -noout -checkend 86400 -in "$d/$f.pem" >/dev/null 2>&1 || return 1
        # The key belongs to the certificate.
        [ "$(openssl x509 -noout -pubkey -in "$d/$f.pem" 2>/dev/null)" \
            = "$(openssl pkey -pubout -in "$d/$f.key" 2>/dev/null)" ] || return 1
    done
    openssl verify -CAfile "$d/ca.pem" "$d/server.pem" "$d/client.pem" >/dev/null 2>&1
}

_svc_certs() {
    export IOTPIPE_TEST_CERTS="$_SVC_CERTS"
    _SVC_CERTS_NEW=0
    if _svc_certs_valid; then
        return 0
    fi
    _SVC_CERTS_NEW=1 # running brokers hold the old ones: restart them
    _svc_log "openssl: test CA, server and client certificates in ${_SVC_CERTS#"$_SVC_ROOT"/}"
    mkdir -p "$_SVC_ENV"
    local t
    t="$(mktemp -d "$_SVC_ENV/certs.tmp.XXXXXX")" || return 1
    # v3 extensions that rustls/webpki insist on: CA:TRUE + keyCertSign on the CA, SAN and
    # the right extendedKeyUsage on the leaves, no CA flag on the leaves.
    cat >"$t/ext.cnf" <<'EOF'
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    (
        set -e
        cd "$t"
        # RSA 2048 keys in PKCS#8 PEM ("BEGIN PRIVATE KEY"): read by rustls-pemfile,
        # OpenSSL and mosquitto alike.
        for n in ca server client; do
            openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$n.key" 2>/dev/null
        done
        openssl req -new -key ca.key -subj "/O=iot-pipeline tests/CN=iot-pipeline test CA" \
            -out ca.csr
        openssl x509 -req -in ca.csr -signkey ca.key -sha256 -days 3650 \
            -extfile ext.cnf -extensions ca -set_serial 1 -out ca.pem 2>/dev/null
        openssl req -new -key server.key -subj "/O=iot-pipeline tests/CN=localhost" \
            -out server.csr
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -sha256 -days 825 \
            -extfile ext.cnf -extensions server -set_serial 2 -out server.pem 2>/dev/null
        openssl req -new -key client.key -subj "/O=iot-pipeline tests/CN=sensor-000001" \
            -out client.csr
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -sha256 -days 825 \
            -extfile ext.cnf -extensions client -set_serial 3 -out client.pem 2>/dev/null
        openssl verify -CAfile ca.pem server.pem client.pem >/dev/null
        rm -f ./*.csr ext.cnf
        chmod 600 ./*.key
        chmod 644 ./*.pem
        chmod 755 .
    ) || { _svc_err "certificate generation failed"; rm -rf "$t"; return 1; }
    rm -rf "$_SVC_CERTS"
    mv "$t" "$_SVC_CERTS"
}

# --- mosquitto ----------------------------------------------------------------------------
# _svc_alive PID MARK — true when PID is live and its command line holds MARK: the config
# file of a mosquitto, the moto_server script of moto (both paths under .test-env, so a
# recycled PID does not match).
_svc_alive() {
    local pid="$1" mark="$2" cmd
    [ -n "$pid" ] && [ -n "$mark" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmd" == *"$mark"* ]]
}

_svc_port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Two distinct free loopback ports (bound at the same time, so they differ).
_svc_free_ports() {
    python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

# _svc_write_conf NAME PORT [TLS]
_svc_write_conf() {
    local name="$1" port="$2" tls="${3:-}" conf="$_SVC_MQ/$1.conf"
    {
        echo "# Generated by tests/setup/services.sh; rewritten on every start."
        echo "# Run as root without 'user root', mosquitto 2.0 switches to user 'mosquitto',"
        echo "# which cannot read the root-owned keys, log and work tree under .test-env."
        echo "user root"
        echo "per_listener_settings false"
        echo "allow_anonymous true"
        echo "persistence false"
        echo "set_tcp_nodelay true"
        echo "max_inflight_messages 1000"
        echo "max_queued_messages 0"
        echo "log_dest file $_SVC_MQ/$name.log"
        echo "log_type error"
        echo "log_type warning"
        echo "log_type notice"
        echo "log_type information"
        echo "connection_messages true"
        echo "log_timestamp true"
        echo ""
        echo "listener $port 127.0.0.1"
        if [ -n "$tls" ]; then
            echo "cafile $_SVC_CERTS/ca.pem"
            echo "certfile $_SVC_CERTS/server.pem"
            echo "keyfile $_SVC_CERTS/server.key"
            echo "require_certificate true"
            echo "tls_version tlsv1.2"
        fi
    } >"$conf"
}

# _svc_start NAME PORT — starts mosquitto with $_SVC_MQ/NAME.conf and waits for the port.
_svc_start() {
    local name="$1" port="$2" conf="$_SVC_MQ/$1.conf" out="$_SVC_MQ/$1.out" pid i
    : >"$out"
    : >"$_SVC_MQ/$name.log"
    # Non-interactive (run.sh): a plain child, so services_down can reap it. Interactive:
    # started from a command substitution, which keeps job-control noise out of the
    # terminal (the broker is then re-parented; once stopped it may linger as a zombie).
    if [[ $- == *i* ]]; then
        pid="$(
            mosquitto -c "$conf" </dev/null >>"$out" 2>&1 &
            echo $!
        )"
    else
        mosquitto -c "$conf" </dev/null >>"$out" 2>&1 &
        pid=$!
    fi
    echo "$name $pid $conf" >>"$_SVC_PIDS"
    SERVICES_STARTED_PIDS="${SERVICES_STARTED_PIDS:+$SERVICES_STARTED_PIDS }$pid"
    for ((i = 0; i < 100; i++)); do
        if _svc_port_open "$port"; then
            _svc_log "mosquitto $name: pid $pid, 127.0.0.1:$port"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        _svc_err "mosquitto $name (pid $pid) does not accept on 127.0.0.1:$port after 10 s"
    else
        _svc_err "mosquitto $name exited at start"
    fi
    echo "---- $out (tail) ----" >&2
    tail -n 20 "$out" >&2
    echo "---- $_SVC_MQ/$name.log (tail) ----" >&2
    tail -n 20 "$_SVC_MQ/$name.log" >&2 2>/dev/null
    return 1
}

# True (and env exported) when the brokers of a previous services_up are all still up.
_svc_reuse() {
    [ -s "$_SVC_PIDS" ] && [ -s "$_SVC_ENVFILE" ] || return 1
    local name pid conf n=0
    while read -r name pid conf; do
        [ "$name" = moto ] && continue # checked by _svc_moto
        _svc_alive "$pid" "$conf" || return 1
        n=$((n + 1))
    done <"$_SVC_PIDS"
    [ "$n" -eq 2 ] || return 1
    # shellcheck disable=SC1090
    source "$_SVC_ENVFILE"
    _svc_port_open "${IOTPIPE_TEST_MQTT##*:}" && _svc_port_open "${IOTPIPE_TEST_MQTTS##*:}"
}

_svc_mosquitto() {
    mkdir -p "$_SVC_MQ"
    if [ "${_SVC_CERTS_NEW:-0}" = 0 ] && _svc_reuse; then
        _svc_log "reusing running mosquitto ($(awk '$1 != "moto" {printf "%s ", $2}' "$_SVC_PIDS")): $IOTPIPE_TEST_MQTT $IOTPIPE_TEST_MQTTS"
        return 0
    fi
    # Leftovers of an interrupted run, if any; a moto still running goes too (it is
    # restarted next, and its state is then fresh as well).
    # shellcheck disable=SC2119  # no PIDs: all recorded ones
    services_down >/dev/null 2>&1
    local ports plain tls
    ports="$(_svc_free_ports)" || { _svc_err "cannot pick free ports"; return 1; }
    read -r plain tls <<<"$ports"
    _svc_write_conf plain "$plain"
    _svc_write_conf tls "$tls" tls
    : >"$_SVC_PIDS"
    _svc_start plain "$plain" || return 1
    _svc_start tls "$tls" || return 1
    export IOTPIPE_TEST_MQTT="mqtt://127.0.0.1:$plain"
    export IOTPIPE_TEST_MQTTS="mqtts://127.0.0.1:$tls"
    {
        echo "# Written by services_up; source it to reach the running test services."
        echo "export IOTPIPE_TEST_PYTHON='$IOTPIPE_TEST_PYTHON'"
        echo "export IOTPIPE_TEST_CERTS='$IOTPIPE_TEST_CERTS'"
        echo "export IOTPIPE_TEST_MQTT='$IOTPIPE_TEST_MQTT'"
        echo "export IOTPIPE_TEST_MQTTS='$IOTPIPE_TEST_MQTTS'"
    } >"$_SVC_ENVFILE"
}

# --- moto (AWS APIs) ----------------------------------------------------------------------
_svc_moto_venv() {
    local py="$_SVC_MOTO_VENV/bin/python"
    if [ -x "$_SVC_MOTO_VENV/bin/moto_server" ] \
        && [ "$(cat "$_SVC_MOTO_VENV/.spec" 2>/dev/null)" = "$_SVC_MOTO_SPEC" ] \
        && "$py" -c 'import moto.server' 2>/dev/null; then
        return 0
    fi
    if [ -e "$_SVC_MOTO_VENV" ] && ! "$py" -c 'import sys' 2>/dev/null; then
        rm -rf "$_SVC_MOTO_VENV"
    fi
    if [ ! -x "$py" ]; then
        _svc_log "python3 -m venv ${_SVC_MOTO_VENV#"$_SVC_ROOT"/}"
        python3 -m venv "$_SVC_MOTO_VENV" || { _svc_err "python3 -m venv (moto) failed"; return 1; }
    fi
    _svc_log "pip install $_SVC_MOTO_SPEC"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$py" -m pip install -q "$_SVC_MOTO_SPEC" \
        || { _svc_err "pip install $_SVC_MOTO_SPEC failed"; return 1; }
    if ! "$py" -c 'import moto.server' || [ ! -x "$_SVC_MOTO_VENV/bin/moto_server" ]; then
        _svc_err "moto_server missing after install"
        return 1
    fi
    printf '%s\n' "$_SVC_MOTO_SPEC" >"$_SVC_MOTO_VENV/.spec"
}

# _svc_moto_answers PORT — true when a moto answers its management API on PORT.
# /moto-api/ (the dashboard page), not /moto-api/data.json: the latter serialises every
# backend and answers 500 once moto holds a Lambda function (no Docker here), which made a
# second services_up restart a healthy moto.
_svc_moto_answers() {
    "$_SVC_MOTO_VENV/bin/python" -c 'import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=2).read()' \
        "$1" 2>/dev/null
}

# _svc_env_set VAR VALUE — exports VAR and records it in services.env (replacing an older
# value; the other lines stay).
_svc_env_set() {
    export "$1=$2"
    local rest=""
    [ -f "$_SVC_ENVFILE" ] && rest="$(grep -v "^export $1=" "$_SVC_ENVFILE")"
    printf '%s\nexport %s=%s\n' "$rest" "$1" "'$2'" >"$_SVC_ENVFILE"
}

_svc_moto() {
    local server="$_SVC_MOTO_VENV/bin/moto_server" out="$_SVC_MOTO/moto.out"
    local name pid mark port i stale=""
    mkdir -p "$_SVC_MOTO"
    # Reuse the moto of an earlier services_up while it runs and answers.
    if [ -s "$_SVC_PIDS" ]; then
        port="$(cat "$_SVC_MOTO/port" 2>/dev/null)"
        while read -r name pid mark; do
            [ "$name" = moto ] || continue
            if _svc_alive "$pid" "$server" && [ -n "$port" ] && _svc_moto_answers "$port"; then
                _svc_env_set IOTPIPE_TEST_MOTO "http://127.0.0.1:$port"
                _svc_log "reusing running moto ($pid): http://127.0.0.1:$port"
                return 0
            fi
            stale+=" $pid"
        done <"$_SVC_PIDS"
        # A recorded moto that is gone or does not answer: stop it if it is still ours,
        # and forget it.
        if [ -n "$stale" ]; then
            # shellcheck disable=SC2086  # a list of PIDs
            services_down $stale >/dev/null 2>&1
        fi
    fi
    port="$(_svc_free_ports | awk '{print $1}')"
    [ -n "$port" ] || { _svc_err "cannot pick a free port for moto"; return 1; }
    : >"$out"
    # Started like the brokers (see _svc_start): a plain child when non-interactive.
    if [[ $- == *i* ]]; then
        pid="$(
            "$server" -H 127.0.0.1 -p "$port" </dev/null >>"$out" 2>&1 &
            echo $!
        )"
    else
        "$server" -H 127.0.0.1 -p "$port" </dev/null >>"$out" 2>&1 &
        pid=$!
    fi
    echo "moto $pid $server" >>"$_SVC_PIDS"
    echo "$port" >"$_SVC_MOTO/port"
    SERVICES_STARTED_PIDS="${SERVICES_STARTED_PIDS:+$SERVICES_STARTED_PIDS }$pid"
    # moto imports its service catalogue before it listens: a few seconds.
    for ((i = 0; i < 300; i++)); do
        if _svc_moto_answers "$port"; then
            _svc_env_set IOTPIPE_TEST_MOTO "http://127.0.0.1:$port"
            _svc_log "moto: pid $pid, http://127.0.0.1:$port"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        _svc_err "moto (pid $pid) does not answer on 127.0.0.1:$port after 30 s"
    else
        _svc_err "moto exited at start"
    fi
    echo "---- $out (tail) ----" >&2
    tail -n 20 "$out" >&2
    return 1
}

# --- cargo-lambda (Lambda Runtime API emulator) -------------------------------------------
_svc_cargo_lambda() {
    local bin="$_SVC_CL_VENV/bin/cargo-lambda"
    if [ -x "$bin" ] && [ "$(cat "$_SVC_CL_VENV/.spec" 2>/dev/null)" = "$_SVC_CL_SPEC" ] \
        && "$bin" lambda --version >/dev/null 2>&1; then
        export IOTPIPE_TEST_CARGO_LAMBDA="$bin"
        return 0
    fi
    if [ -e "$_SVC_CL_VENV" ] && ! "$_SVC_CL_VENV/bin/python" -c 'import sys' 2>/dev/null; then
        rm -rf "$_SVC_CL_VENV"
    fi
    if [ ! -x "$_SVC_CL_VENV/bin/python" ]; then
        _svc_log "python3 -m venv ${_SVC_CL_VENV#"$_SVC_ROOT"/}"
        python3 -m venv "$_SVC_CL_VENV" || { _svc_err "python3 -m venv (cargo-lambda) failed"; return 1; }
    fi
    _svc_log "pip install $_SVC_CL_SPEC"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$_SVC_CL_VENV/bin/python" -m pip install -q "$_SVC_CL_SPEC" \
        || { _svc_err "pip install $_SVC_CL_SPEC failed"; return 1; }
    "$bin" lambda --version >/dev/null 2>&1 || { _svc_err "cargo-lambda does not run after install"; return 1; }
    printf '%s\n' "$_SVC_CL_SPEC" >"$_SVC_CL_VENV/.spec"
    export IOTPIPE_TEST_CARGO_LAMBDA="$bin"
}

# --- AWS CLI (for the smoke deploy of infra/*.sh against moto) ---------------------------
_svc_awscli() {
    local bin="$_SVC_AWS_VENV/bin/aws"
    if [ -x "$bin" ] && [ "$(cat "$_SVC_AWS_VENV/.spec" 2>/dev/null)" = "$_SVC_AWS_SPEC" ] \
        && "$bin" --version >/dev/null 2>&1; then
        export IOTPIPE_TEST_AWS="$bin"
        return 0
    fi
    if [ -e "$_SVC_AWS_VENV" ] && ! "$_SVC_AWS_VENV/bin/python" -c 'import sys' 2>/dev/null; then
        rm -rf "$_SVC_AWS_VENV"
    fi
    if [ ! -x "$_SVC_AWS_VENV/bin/python" ]; then
        _svc_log "python3 -m venv ${_SVC_AWS_VENV#"$_SVC_ROOT"/}"
        python3 -m venv "$_SVC_AWS_VENV" || { _svc_err "python3 -m venv (awscli) failed"; return 1; }
    fi
    _svc_log "pip install $_SVC_AWS_SPEC"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$_SVC_AWS_VENV/bin/python" -m pip install -q "$_SVC_AWS_SPEC" \
        || { _svc_err "pip install $_SVC_AWS_SPEC failed"; return 1; }
    "$bin" --version >/dev/null 2>&1 || { _svc_err "aws does not run after install"; return 1; }
    printf '%s\n' "$_SVC_AWS_SPEC" >"$_SVC_AWS_VENV/.spec"
    export IOTPIPE_TEST_AWS="$bin"
}

# --- chromium (the dashboard's browser test) ---------------------------------------------
# Debian's package: no browser download at run time. The lists are refreshed only when it
# is missing.
_svc_chromium() {
    local bin
    bin="$(command -v chromium || true)"
    if [ -z "$bin" ]; then
        if [ "$(id -u)" != 0 ]; then
            _svc_err "chromium missing and not root: apt-get install chromium"
            return 1
        fi
        _svc_log "apt-get install chromium"
        DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update \
            >/dev/null || { _svc_err "apt-get update failed"; return 1; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o DPkg::Lock::Timeout=300 chromium fonts-dejavu-core >/dev/null \
            || { _svc_err "apt-get install chromium failed"; return 1; }
        bin="$(command -v chromium || true)"
        [ -n "$bin" ] || { _svc_err "chromium not on PATH after install"; return 1; }
    fi
    export IOTPIPE_TEST_CHROMIUM="$bin"
}

# --- public -------------------------------------------------------------------------------
services_up() {
    local t0=$SECONDS
    SERVICES_STARTED_PIDS=""
    mkdir -p "$_SVC_ENV" || return 1
    _svc_packages || return 1
    _svc_venv || return 1
    _svc_moto_venv || return 1
    _svc_cargo_lambda || return 1
    _svc_awscli || return 1
    _svc_chromium || return 1
    _svc_certs || return 1
    _svc_mosquitto || return 1
    _svc_moto || return 1
    _svc_env_set IOTPIPE_TEST_CARGO_LAMBDA "$IOTPIPE_TEST_CARGO_LAMBDA"
    _svc_env_set IOTPIPE_TEST_AWS "$IOTPIPE_TEST_AWS"
    _svc_env_set IOTPIPE_TEST_CHROMIUM "$IOTPIPE_TEST_CHROMIUM"
    _svc_log "up in $((SECONDS - t0))s"
    _svc_log "IOTPIPE_TEST_PYTHON=$IOTPIPE_TEST_PYTHON"
    _svc_log "IOTPIPE_TEST_CERTS=$IOTPIPE_TEST_CERTS"
    _svc_log "IOTPIPE_TEST_MQTT=$IOTPIPE_TEST_MQTT"
    _svc_log "IOTPIPE_TEST_MQTTS=$IOTPIPE_TEST_MQTTS"
    # shellcheck disable=SC2153  # exported by _svc_env_set
    _svc_log "IOTPIPE_TEST_MOTO=$IOTPIPE_TEST_MOTO"
    _svc_log "IOTPIPE_TEST_CARGO_LAMBDA=$IOTPIPE_TEST_CARGO_LAMBDA"
    _svc_log "IOTPIPE_TEST_AWS=$IOTPIPE_TEST_AWS"
    _svc_log "IOTPIPE_TEST_CHROMIUM=$IOTPIPE_TEST_CHROMIUM"
}

# services_down [PID...] — stops the services recorded in .test-env/pids (only those, and
# only while they still run our config or our moto_server); with PIDs, only those of them.
# shellcheck disable=SC2120  # run.sh passes PIDs
services_down() {
    [ -f "$_SVC_PIDS" ] || return 0
    local name pid conf only=" $* " keep="" i
    local -a stopping=()
    while read -r name pid conf; do
        [ -n "$pid" ] || continue
        if [ "$#" -gt 0 ] && [[ "$only" != *" $pid "* ]]; then
            keep+="$name $pid $conf"$'\n'
            continue
        fi
        if _svc_alive "$pid" "$conf"; then
            kill -TERM "$pid" 2>/dev/null && stopping+=("$pid $conf")
            _svc_log "stopping $name (pid $pid)"
        fi
    done <"$_SVC_PIDS"
    # Wait up to 5 s each (an exited one may linger as a zombie: _svc_alive says no).
    for i in "${stopping[@]}"; do
        read -r pid conf <<<"$i"
        local n
        for ((n = 0; n < 50; n++)); do
            _svc_alive "$pid" "$conf" || break
            sleep 0.1
        done
        _svc_alive "$pid" "$conf" && kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null || true # reap it when it is our child; no-op otherwise
    done
    if [ -n "$keep" ]; then
        printf '%s' "$keep" >"$_SVC_PIDS"
    else
        rm -f "$_SVC_PIDS" "$_SVC_ENVFILE"
        unset IOTPIPE_TEST_MQTT IOTPIPE_TEST_MQTTS IOTPIPE_TEST_MOTO
    fi
    return 0
}
