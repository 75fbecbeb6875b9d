#!/usr/bin/env bash
# The participant conformance kit (bench/src/bin/conformance) against the project's participants:
# brings up PostgreSQL and a Kafka broker of its own, then for each participant chosen starts it
# on fresh databases and lets the kit play the orchestrator against it over real Kafka
# (docs/PARTICIPANT_PROTOCOL.md says what is checked). Exits non-zero if any check fails.
#
#   scripts/conformance.sh                  # the Rust post-service and user-service
#   scripts/conformance.sh --java           # and the Spring Boot post service (participants/post-service-java)
#   scripts/conformance.sh --only java      # only the Spring Boot post service
#   scripts/conformance.sh --e2e java       # the whole stack with the Spring Boot post service in place of
#                                           # the Rust one: mixed load, then the consistency audit (which
#                                           # reads the participants' audit endpoints)
#   scripts/conformance.sh --e2e rust       # the same with the Rust post-service
#   scripts/conformance.sh --e2e both       # both, one after the other, and their outcomes compared
#   scripts/conformance.sh --ci             # CI: all three participants, then --e2e both
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$SAGA_ROOT"

BROKER_PORT="${CONFORMANCE_BROKER_PORT:-39092}"
TARGET="${CARGO_TARGET_DIR:-$SAGA_ROOT/target}"
LOGS="$TARGET/conformance"
JAVA_DIR="$SAGA_ROOT/participants/post-service-java"
JAR="$JAVA_DIR/target/post-service-java.jar"

participants=(rust-post rust-user)
e2e=""
while [ $# -gt 0 ]; do
    case "$1" in
        --java) participants+=(java-post) ;;
        --only) shift; case "${1:-}" in
                rust) participants=(rust-post rust-user) ;;
                java) participants=(java-post) ;;
                rust-post | rust-user | java-post) participants=("$1") ;;
                *) die "--only rust|java|rust-post|rust-user|java-post" ;;
            esac ;;
        --ci) participants=(rust-post rust-user java-post); e2e=both ;;
        --e2e) shift; case "${1:-}" in
                rust | java | both) e2e="$1"; participants=() ;;
                *) die "--e2e rust|java|both" ;;
            esac ;;
        *) die "unknown argument $1 (see the top of $0)" ;;
    esac
    shift
done

mkdir -p "$LOGS"

# Maven and a JDK 17+, from Debian; the first build fetches from Maven Central into ~/.m2, later
# ones run offline.
ensure_maven() {
    if ! command -v mvn >/dev/null || ! command -v javac >/dev/null; then
        apt_install maven openjdk-17-jdk-headless
    fi
}

build_java() {
    ensure_maven
    log "building and unit-testing the Spring Boot post service (mvn package)"
    local started=$SECONDS
    # Offline from ~/.m2 when it has everything; otherwise once online.
    (cd "$JAVA_DIR" && { mvn -o -B -Dstyle.color=never package >"$LOGS/mvn.log" 2>&1 || mvn -B -Dstyle.color=never package >"$LOGS/mvn.log" 2>&1; }) || {
        tail -60 "$LOGS/mvn.log" >&2
        die "the Spring Boot post service did not build or its tests failed (log: $LOGS/mvn.log)"
    }
    local tests
    tests="$(grep -E '^\[INFO\] Tests run: [0-9]+, Failures: 0, Errors: 0' "$LOGS/mvn.log" | tail -1 | sed -E 's/.*Tests run: ([0-9]+).*/\1/')"
    log "built $JAR in $((SECONDS - started)) s; Java unit tests: ${tests:-0} run, none failed"
}

# free_port BASE: the first port from BASE up that nothing on 127.0.0.1 listens on.
free_port() {
    local port="$1"
    while port_open 127.0.0.1 "$port"; do port=$((port + 1)); done
    echo "$port"
}

# listens PID PORT SECONDS: waits until process PID itself listens on PORT; false if it exits
# or the time is up.
listens() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        kill -0 "$1" 2>/dev/null || return 1
        ss -Hltnp "sport = :$2" 2>/dev/null | grep -q "pid=$1," && return 0
        sleep 0.1
    done
    return 1
}

fresh_db() {
    PGOPTIONS="-c client_min_messages=warning" psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc \
        "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null
    echo "postgres://postgres@$PG_HOST:$PG_PORT/$1"
}

begin_stack
start_own_broker "$BROKER_PORT" "$LOGS" "the kit"

bins=(--bin conformance --bin post-service --bin user-service)
[ -n "$e2e" ] && bins+=(--bin orchestrator --bin loadgen)
log "cargo build ${bins[*]}"
cargo build --quiet -p saga-bench -p post-service -p user-service -p saga-orchestrator "${bins[@]}"
bin="$TARGET/debug"
if [ "$e2e" = java ] || [ "$e2e" = both ] || [[ " ${participants[*]} " == *" java-post "* ]]; then build_java; fi

export APP_KAFKA__BROKERS="127.0.0.1:$BROKER_PORT"
export APP_DATABASE__CREATE_IF_MISSING=true
export RUST_LOG="${RUST_LOG:-warn}"

# The command that starts a participant; the kit runs it, SIGKILLs it once and restarts it.
participant_command() {
    case "$1" in
        rust-post) echo "$bin/post-service" ;;
        rust-user) echo "$bin/user-service" ;;
        java-post) echo "java -XX:TieredStopAtLevel=1 -Xss512k -jar $JAR" ;;
    esac
}

if [ "${#participants[@]}" -gt 0 ]; then
    failed=()
    for p in "${participants[@]}"; do
        case "$p" in
            rust-post | java-post) profile=post-service; db="conf_posts_${p%-post}" ;;
            rust-user) profile=user-service; db=conf_users ;;
        esac
        url="$(fresh_db "$db")"
        HTTP_PORT="$(free_port $((39150 + RANDOM % 400)))"
        log "conformance: $p (profile $profile, database $db)"
        started=$SECONDS
        # A topic prefix of its own per participant: nothing left on the broker by another run counts.
        if APP_DATABASE__URL="$url" APP_HTTP__LISTEN="127.0.0.1:$HTTP_PORT" \
            APP_KAFKA__TOPIC_PREFIX="conf-$p-$(date +%s)." \
            "$bin/conformance" --brokers "127.0.0.1:$BROKER_PORT" --participant "$profile" \
            --run "$(participant_command "$p")" --run-log "$LOGS/$p.log" --database-url "$url" --otlp \
            --http "http://127.0.0.1:$HTTP_PORT"; then
            log "$p conforms ($((SECONDS - started)) s)"
        else
            failed+=("$p")
            log "$p FAILED ($((SECONDS - started)) s; its log: $LOGS/$p.log)"
        fi
    done
    [ "${#failed[@]}" -eq 0 ] || die "not conforming: ${failed[*]}"
    log "all participants conform: ${participants[*]}"
fi
[ -n "$e2e" ] || exit 0

# run_e2e rust|java: orchestrator, Rust user-service and that post service on fresh databases,
# under mixed load, then the consistency audit (loadgen fails the run on any saga not terminal or
# any drift between the databases). Leaves the outcome line in $LOGS/e2e-<impl>.out.
run_e2e() {
    local impl="$1" grpc orch_http users_http posts_http orch_db users_db posts_db orch_pid users_pid post_pid try
    # Topics of its own per run: nothing of an earlier run is consumed.
    local -x APP_KAFKA__TOPIC_PREFIX
    APP_KAFKA__TOPIC_PREFIX="conf-e2e-$impl-$(date +%s)."
    local post_cmd
    read -ra post_cmd <<<"$(participant_command "$impl-post")"
    # These ports lie in the kernel's ephemeral range: one that looked free can be taken by an
    # outgoing connection before a service binds it. Then the stack starts again on other ports.
    for try in 1 2 3; do
        grpc="$(free_port $((39150 + RANDOM % 400)))"
        orch_http="$(free_port $((grpc + 1)))"
        users_http="$(free_port $((orch_http + 1)))"
        posts_http="$(free_port $((users_http + 1)))"
        orch_db="$(fresh_db "conf_e2e_${impl}_orchestrator")"
        users_db="$(fresh_db "conf_e2e_${impl}_users")"
        posts_db="$(fresh_db "conf_e2e_${impl}_posts")"
        # The orchestrator's consistency audit (RunAudit) reads both participants' audit endpoints,
        # so the post service under test answers the real audit too.
        APP_DATABASE__URL="$orch_db" APP_GRPC__LISTEN="127.0.0.1:$grpc" APP_HTTP__LISTEN="127.0.0.1:$orch_http" \
            APP_AUDIT__PARTICIPANTS__USERS="http://127.0.0.1:$users_http" \
            APP_AUDIT__PARTICIPANTS__POSTS="http://127.0.0.1:$posts_http" \
            "$bin/orchestrator" >"$LOGS/e2e-$impl-orchestrator.log" 2>&1 &
        orch_pid=$!
        APP_DATABASE__URL="$users_db" APP_HTTP__LISTEN="127.0.0.1:$users_http" \
            "$bin/user-service" >"$LOGS/e2e-$impl-user-service.log" 2>&1 &
        users_pid=$!
        APP_DATABASE__URL="$posts_db" APP_HTTP__LISTEN="127.0.0.1:$posts_http" \
            "${post_cmd[@]}" >"$LOGS/e2e-$impl-post-service.log" 2>&1 &
        post_pid=$!
        pids+=("$orch_pid" "$users_pid" "$post_pid")
        if listens "$orch_pid" "$grpc" 60 && listens "$users_pid" "$users_http" 60 &&
            listens "$post_pid" "$posts_http" 120; then
            break
        fi
        kill "$orch_pid" "$users_pid" "$post_pid" 2>/dev/null || true
        wait "$orch_pid" "$users_pid" "$post_pid" 2>/dev/null || true
        [ "$try" -lt 3 ] || {
            tail -n 5 "$LOGS/e2e-$impl-"*.log >&2
            die "the stack with the $impl post service did not come up (logs: $LOGS/e2e-$impl-*.log)"
        }
        log "a service of the stack did not come up (a port taken?); again on other ports"
    done
    local metrics=(--metrics "orchestrator=http://127.0.0.1:$orch_http"
        --metrics "user-service=http://127.0.0.1:$users_http" --metrics "post-service=http://127.0.0.1:$posts_http")
    local dbs=(--orchestrator-db "$orch_db" --users-db "$users_db" --posts-db "$posts_db")
    log "warming up"
    "$bin/loadgen" --orchestrator "http://127.0.0.1:$grpc" "${dbs[@]}" "${metrics[@]}" \
        --rate 20 --duration 1 --drain-secs 120 --no-audit >/dev/null
    log "end to end with the $impl post service: mixed load, then the consistency audit"
    "$bin/loadgen" --orchestrator "http://127.0.0.1:$grpc" "${dbs[@]}" "${metrics[@]}" \
        --rate "${E2E_RATE:-50}" --duration "${E2E_DURATION:-10}" --mix mixed --drain-secs 120 |
        tee "$LOGS/e2e-$impl.out"
    kill "$orch_pid" "$users_pid" "$post_pid" 2>/dev/null || true
    wait "$orch_pid" "$users_pid" "$post_pid" 2>/dev/null || true
}

# "started N …; terminal N of N (a compensated, b completed)" → "N: a compensated, b completed"
outcome() {
    sed -nE 's/^started ([0-9]+) in .*terminal [0-9]+ of [0-9]+ \((.*)\) .*/\1 started: \2/p' "$LOGS/e2e-$1.out"
}

if [ "$e2e" = both ]; then
    run_e2e rust
    run_e2e java
    rust="$(outcome rust)" java="$(outcome java)"
    log "rust post service: $rust"
    log "java post service: $java"
    if [ "${rust%% *}" = "${java%% *}" ] && [ "$rust" != "$java" ]; then
        die "the same load ended differently with the two post services"
    fi
    log "the same outcome with either post service"
else
    run_e2e "$e2e"
fi
