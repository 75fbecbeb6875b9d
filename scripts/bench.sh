#!/usr/bin/env bash
# The load benchmark: brings up a fresh Kafka broker, fresh databases and release builds of the
# three services on their own ports, then runs the load generator against them (arguments pass
# through to bench/src/bin/loadgen.rs).
#
#   scripts/bench.sh                                  # open loop, 500 register_user sagas/s, 30 s
#   scripts/bench.sh --rate 1000 --duration 60        # the throughput target
#   scripts/bench.sh --mode closed --clients 32       # closed loop
#   scripts/bench.sh --mix mixed                      # with publish_post and compensations
#   scripts/bench.sh --mix publish                    # publish_post only: three steps in a line
#   scripts/bench.sh --mix parallel                   # moderated_post, trusted: two of them at once
#   scripts/bench.sh --soak                           # 10 minutes at 150/s, mixed, a report a minute
#   scripts/bench.sh --idle 60                        # no traffic: what the idle stack costs
#   scripts/bench.sh --short                          # CI smoke: 50/s for 5 s, no figures to trust
#
# Overload with admission control: BENCH_MAX_IN_FLIGHT=N sets the orchestrator's limit of sagas in
# flight (refused starts are counted apart from errors):
#
#   BENCH_MAX_IN_FLIGHT=500 scripts/bench.sh --rate 2900 --duration 60
#
# BENCH_WARMUP_SECS=N runs the same load for N seconds first, unmeasured (a warm broker, as
# deployed; the measured run's audit still counts the warm-up's sagas).
#
# BENCH_BIN=DIR runs the binaries in DIR instead of building: an A/B of two builds on one machine
# (copy target/release/{orchestrator,user-service,post-service,loadgen} aside, change, compare).
#
# Load while retention works: BENCH_SEED_FINISHED=N seeds the orchestrator's database with N
# finished sagas (history and keys) created over the last two days (bench/src/bin/scale.rs);
# BENCH_RETENTION_DAYS=1 then makes retention remove the older day while the load runs, and
# BENCH_RETENTION_DAYS=off keeps it from running at all (the comparison):
#
#   BENCH_SEED_FINISHED=1000000 BENCH_RETENTION_DAYS=1   scripts/bench.sh --rate 500 --duration 60
#   BENCH_SEED_FINISHED=1000000 BENCH_RETENTION_DAYS=off scripts/bench.sh --rate 500 --duration 60
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$SAGA_ROOT"

BROKER_PORT="${BENCH_BROKER_PORT:-29092}"
# Below the kernel's ephemeral range (32768-60999 by default): a port in it can be taken by any
# outgoing connection — the broker's own connection to its controller once sat on 50052, so the
# orchestrator could not bind it (two runs in a row with BENCH_BROKER_PORT=39192).
GRPC_PORT=18052
LOGS="$SAGA_ROOT/target/bench"
mkdir -p "$LOGS"
args=()
short=false
for a in "$@"; do
    case "$a" in
        --short) short=true ;;
        --soak) args+=(--rate 150 --duration 600 --mix mixed --report-secs 60) ;;
        *) args+=("$a") ;;
    esac
done
$short && args=(--rate 50 --duration 5 --mix mixed "${args[@]}")

begin_stack
start_own_broker "$BROKER_PORT" "$LOGS" "the benchmark"
for db in bench_orchestrator bench_users bench_posts; do
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
done

if [[ -n "${BENCH_BIN:-}" ]]; then
    bin="$BENCH_BIN"
elif $short; then
    cargo build --quiet --bins
    bin="$SAGA_ROOT/target/debug"
else
    cargo build --release --quiet --bins
    bin="$SAGA_ROOT/target/release"
fi

retention=()
case "${BENCH_RETENTION_DAYS:-}" in
    "") ;;
    off) retention=(APP_RETENTION__ENABLED=false) ;;
    *) retention=(APP_RETENTION__MAX_AGE_DAYS="$BENCH_RETENTION_DAYS") ;;
esac
# BENCH_MAX_IN_FLIGHT=N: the orchestrator's admission limit (APP_ADMISSION__MAX_IN_FLIGHT; 0: none).
# Orchestrator settings must not go in the environment of the whole script: the participants
# refuse settings they do not know.
[[ -n "${BENCH_MAX_IN_FLIGHT:-}" ]] && retention+=(APP_ADMISSION__MAX_IN_FLIGHT="$BENCH_MAX_IN_FLIGHT")
if [[ -n "${BENCH_SEED_FINISHED:-}" ]]; then
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc "CREATE DATABASE bench_orchestrator" >/dev/null
    log "seeding $BENCH_SEED_FINISHED finished sagas over two days"
    RUST_LOG=warn "$bin/scale" --seed-into "postgres://postgres@$PG_HOST:$PG_PORT/bench_orchestrator" \
        --sagas "$BENCH_SEED_FINISHED" --days 2 >"$LOGS/seed.log"
fi

export APP_KAFKA__BROKERS="127.0.0.1:$BROKER_PORT"
export APP_DATABASE__CREATE_IF_MISSING=true
# Extra connection parameters for every service's database URL (experiments), e.g.
# BENCH_DB_PARAMS='?options=-c%20plan_cache_mode%3Dforce_custom_plan'
q="${BENCH_DB_PARAMS:-}"
export RUST_LOG="${RUST_LOG:-warn}"
APP_DATABASE__URL="postgres://postgres@$PG_HOST:$PG_PORT/bench_orchestrator$q" \
APP_GRPC__LISTEN="127.0.0.1:$GRPC_PORT" APP_HTTP__LISTEN=127.0.0.1:18080 \
APP_AUDIT__PARTICIPANTS__USERS=http://127.0.0.1:18081 APP_AUDIT__PARTICIPANTS__POSTS=http://127.0.0.1:18082 \
APP_AUDIT__CROSS_CHECKS__AUTHORS_REPLICATE_USERS="users.users = posts.authors" \
APP_AUDIT__CROSS_CHECKS__POST_COUNTS_AGREE="users.post_counts = posts.post_counts" \
    env ${retention[@]+"${retention[@]}"} "$bin/orchestrator" >"$LOGS/orchestrator.log" 2>&1 &
pids+=("$!")
APP_DATABASE__URL="postgres://postgres@$PG_HOST:$PG_PORT/bench_users$q" APP_HTTP__LISTEN=127.0.0.1:18081 \
APP_RULES__DEFAULT_POST_QUOTA=100000000 \
    "$bin/user-service" >"$LOGS/user-service.log" 2>&1 &
pids+=("$!")
APP_DATABASE__URL="postgres://postgres@$PG_HOST:$PG_PORT/bench_posts$q" APP_HTTP__LISTEN=127.0.0.1:18082 \
    "$bin/post-service" >"$LOGS/post-service.log" 2>&1 &
pids+=("$!")
wait_port 127.0.0.1 "$GRPC_PORT" 60 "the orchestrator"

# Warm-up: a few sagas through the whole pipeline prove every consumer group has joined.
log "warming up"
"$bin/loadgen" --orchestrator "http://127.0.0.1:$GRPC_PORT" --rate 20 --duration 1 --drain-secs 60 --no-audit >/dev/null
# BENCH_WARMUP_SECS=N: first the same load for N seconds, unmeasured, so the broker's JVM has
# compiled its hot paths (a deployed broker is warm; a fresh one spends a 30-s run compiling).
if [[ -n "${BENCH_WARMUP_SECS:-}" ]]; then
    warm=()
    skip=false
    for a in "${args[@]}"; do
        if $skip; then skip=false; continue; fi
        case "$a" in
            --duration|--report-secs) skip=true ;;
            --duration=*|--report-secs=*|--no-audit) ;;
            *) warm+=("$a") ;;
        esac
    done
    log "warming up at the offered load for $BENCH_WARMUP_SECS s (not measured)"
    "$bin/loadgen" --orchestrator "http://127.0.0.1:$GRPC_PORT" "${warm[@]}" \
        --duration "$BENCH_WARMUP_SECS" --no-audit >"$LOGS/warmup.log"
fi
log "load: ${args[*]:-(defaults)}"
"$bin/loadgen" --orchestrator "http://127.0.0.1:$GRPC_PORT" --broker-pid "$broker_pid" "${args[@]}"
