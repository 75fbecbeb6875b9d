# Shared by the scripts (test.sh, dev.sh, bench.sh, conformance.sh, chaos.sh, peers.sh): bring up
# what the project needs on a fresh Debian machine, installing what is missing. Source it; it
# defines functions only.

SAGA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAGA_CACHE="${SAGA_CACHE:-$HOME/.cache/saga-coordinator}"
PG_HOST=127.0.0.1
PG_PORT="${PG_PORT:-5432}"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    log "installing with apt: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 || {
        as_root apt-get update -q >/dev/null 2>&1
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
    }
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # host port seconds what
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        port_open "$1" "$2" && return 0
        sleep 0.1
    done
    die "$4 did not come up on $1:$2 within $3 s"
}

ensure_build_tools() {
    command -v cc >/dev/null && command -v make >/dev/null || apt_install build-essential
    # librdkafka links the system OpenSSL for TLS and SASL/SCRAM to the brokers.
    { command -v pkg-config >/dev/null && pkg-config --exists openssl; } || apt_install pkg-config libssl-dev
    command -v cargo >/dev/null || die "cargo is missing: install Rust from https://rustup.rs"
}

# ensure_cargo_tool CRATE VERSION: the cargo subcommand CRATE (cargo-<name>) at exactly VERSION,
# built once from crates.io into ~/.cargo/bin (cargo install --locked).
ensure_cargo_tool() {
    local crate="$1" version="$2"
    if cargo "${crate#cargo-}" --version 2>/dev/null | grep -qwF "$version"; then
        return 0
    fi
    log "installing $crate $version (cargo install --locked; once, a few minutes)"
    cargo install --locked --quiet "$crate" --version "$version" ||
        die "could not install $crate $version"
}

# cargo-nextest: each test binary's tests in processes of their own, so a test that hangs or
# crashes names itself.
NEXTEST_VERSION=0.9.151
ensure_nextest() { ensure_cargo_tool cargo-nextest "$NEXTEST_VERSION"; }

# cargo-machete: dependencies a crate lists but does not use.
MACHETE_VERSION=0.9.2
ensure_machete() { ensure_cargo_tool cargo-machete "$MACHETE_VERSION"; }

# PostgreSQL on 127.0.0.1:$PG_PORT reachable as user postgres without a password.
pg_login_ok() {
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -w -Atc 'SELECT 1' >/dev/null 2>&1
}

ensure_postgres() {
    if command -v pg_isready >/dev/null && pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && pg_login_ok; then
        return 0
    fi
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        apt_install postgresql
    fi
    local ver
    ver="$(ls /usr/lib/postgresql | sort -V | tail -1)"
    if ! pg_lsclusters -h 2>/dev/null | grep -q "^$ver main"; then
        as_root pg_createcluster "$ver" main >/dev/null
    fi
    log "starting PostgreSQL $ver"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && break
        sleep 0.2
    done
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT" || die "PostgreSQL did not start on $PG_HOST:$PG_PORT"
    # A fresh Debian cluster wants passwords on TCP; this development set-up lets `postgres`
    # in from loopback without one.
    if ! pg_login_ok; then
        local hba="/etc/postgresql/$ver/main/pg_hba.conf"
        log "allowing passwordless loopback access for user postgres in $hba (development only)"
        as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
        sleep 1
        pg_login_ok || die "cannot log in to PostgreSQL as postgres on $PG_HOST:$PG_PORT"
    fi
}

# start_broker PORT DIR LOGFILE: the local Apache Kafka broker (scripts/kafka.sh) on
# 127.0.0.1:PORT with its log directory in DIR, in the background, unless something already
# listens there. Returns once the broker serves. Prints the PID of a broker it started (nothing if
# one was already there).
start_broker() {
    local port="$1" dir="$2" logfile="$3"
    if port_open 127.0.0.1 "$port"; then
        log "a broker already listens on 127.0.0.1:$port; using it"
        return 0
    fi
    "$SAGA_ROOT/scripts/kafka.sh" install >/dev/null
    log "starting Apache Kafka on 127.0.0.1:$port (data: $dir, log: $logfile)"
    mkdir -p "$(dirname "$logfile")"
    nohup "$SAGA_ROOT/scripts/kafka.sh" run --dir "$dir" --port "$port" >"$logfile" 2>&1 &
    local pid=$! i
    for ((i = 0; i < 900; i++)); do
        grep -q 'Kafka Server started' "$logfile" 2>/dev/null && port_open 127.0.0.1 "$port" && {
            echo "$pid"
            return 0
        }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    tail -30 "$logfile" >&2
    kill "$pid" 2>/dev/null || true
    die "Kafka did not start on 127.0.0.1:$port (log: $logfile)"
}

# stop_broker PID: a controlled shutdown (SIGTERM), SIGKILL if it takes over 30 s.
stop_broker() {
    local pid="$1" i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# Stops the stack a script started: the processes in its `pids` array, then its broker
# (`$broker_pid`). For `trap stop_stack EXIT`.
stop_stack() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait "${pids[@]}" 2>/dev/null || true
    stop_broker "$broker_pid"
}

# begin_stack: how a script that brings up the stack starts (dev.sh, bench.sh, conformance.sh):
# nothing started yet (`pids`, `broker_pid`), all of it stopped on exit or Ctrl-C, and the build
# tools and PostgreSQL there.
begin_stack() {
    pids=()
    broker_pid=""
    trap stop_stack EXIT
    trap 'exit 130' INT TERM
    ensure_build_tools
    ensure_postgres
}

# start_own_broker PORT DIR WHO: a broker for this script alone, on an empty log directory
# DIR/kafka (log: DIR/broker.log); refuses, naming WHO, if something already listens on PORT.
# Sets `broker_pid` (for stop_stack).
start_own_broker() {
    local port="$1" dir="$2" who="$3"
    if port_open 127.0.0.1 "$port"; then
        die "something already listens on 127.0.0.1:$port; $who wants a broker of its own"
    fi
    rm -rf "$dir/kafka"
    broker_pid="$(start_broker "$port" "$dir/kafka" "$dir/broker.log")"
}

# PyYAML for python3: k8s/tools/check_metrics.py reads the alert rules (an end-to-end test runs it).
ensure_python_yaml() {
    python3 -c 'import yaml' 2>/dev/null && return 0
    log "installing PyYAML for python3 (pip --user)"
    python3 -m pip install --quiet --user --disable-pip-version-check pyyaml ||
        die "could not install PyYAML for python3"
}

# Headless Chromium and its WebDriver, for the dashboard's browser tests.
ensure_browser() {
    command -v chromium >/dev/null && command -v chromedriver >/dev/null && return 0
    apt_install chromium chromium-driver
}

# Databases left behind by earlier test runs.
drop_test_databases() {
    local dbs
    dbs="$(psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atc \
        "SELECT datname FROM pg_database WHERE datname LIKE 'test\_%'")" || return 0
    local db
    for db in $dbs; do
        psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
    done
}
