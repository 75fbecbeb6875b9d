#!/usr/bin/env bash
# Brings up everything on this machine — PostgreSQL, the tansu broker, the orchestrator, the user
# service and the post service — and runs the demo. Installs what is missing.
#
#   scripts/dev.sh           # demo, then keep the stack running until Ctrl-C
#   scripts/dev.sh --once    # demo, then stop everything (exit status = the demo's)
#   scripts/dev.sh --release # build optimised binaries first
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$SAGA_ROOT"

once=false
profile=debug
for arg in "$@"; do
    case "$arg" in
        --once) once=true ;;
        --release) profile=release ;;
        *) die "unknown option $arg (use --once and/or --release)" ;;
    esac
done

BROKER_PORT="${BROKER_PORT:-9092}"
GRPC_PORT="${GRPC_PORT:-50051}"
LOGS="$SAGA_ROOT/target/dev"
mkdir -p "$LOGS"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_build_tools
ensure_postgres
broker_pid="$(start_broker "$BROKER_PORT" "$LOGS/broker.log")"
if [ -n "$broker_pid" ]; then
    pids+=("$broker_pid")
    # The broker keeps messages in memory only: a new broker has lost every message of an earlier
    # run, so start the databases afresh as well rather than leave sagas waiting on lost replies.
    for db in saga_orchestrator saga_users saga_posts; do
        psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
    done
    log "fresh broker, fresh databases (saga_orchestrator, saga_users, saga_posts)"
fi

log "building ($profile)"
if [ "$profile" = release ]; then
    cargo build --release --quiet --bins
else
    cargo build --quiet --bins
fi
bin="$SAGA_ROOT/target/$profile"

# Local settings: the broker above, quick consumer-group joins and short fetch waits (tansu waits
# the full fetch.wait.max.ms even when data is there).
export APP_KAFKA__BROKERS="127.0.0.1:$BROKER_PORT"
export APP_KAFKA__CONSUMER__FETCH_WAIT_MAX_MS=10
# Two partitions per topic: one replica of each service needs no more, and tansu's work per fetch
# grows with the partitions fetched (8 partitions cost it 2.4x the idle CPU of 2; docs/PERFORMANCE.md).
export APP_KAFKA__PARTITIONS=2
export APP_KAFKA__CONSUMER__SESSION_TIMEOUT_MS=6000
export APP_KAFKA__CONSUMER__HEARTBEAT_INTERVAL_MS=1000
export RUST_LOG="${RUST_LOG:-info}"

# A development operator credential for sagactl (export SAGACTL_TOKEN to use it).
DEV_OPERATOR_TOKEN="${DEV_OPERATOR_TOKEN:-dev-operator-token-change-me}"

log "starting orchestrator, user-service, post-service (logs: target/dev/)"
APP_GRPC__LISTEN="127.0.0.1:$GRPC_PORT" APP_AUTH__OPERATORS__DEV="$DEV_OPERATOR_TOKEN" \
    "$bin/orchestrator" >"$LOGS/orchestrator.log" 2>&1 &
pids+=("$!")
for svc in user-service post-service; do
    "$bin/$svc" >"$LOGS/$svc.log" 2>&1 &
    pids+=("$!")
done
wait_port 127.0.0.1 "$GRPC_PORT" 60 "the orchestrator"

log "running the demo"
status=0
"$bin/demo" --orchestrator "http://127.0.0.1:$GRPC_PORT" || status=$?
if $once; then
    exit "$status"
fi
cat <<TXT

The stack is up: orchestrator gRPC on 127.0.0.1:$GRPC_PORT (reflection on), broker on
127.0.0.1:$BROKER_PORT, databases saga_orchestrator / saga_users / saga_posts on $PG_HOST:$PG_PORT.
Dashboard: http://127.0.0.1:8080/ (sign in with $DEV_OPERATOR_TOKEN to act).
Metrics and health: http://127.0.0.1:8080/metrics (orchestrator), :8081 (user-service), :8082
(post-service), each with /healthz and /readyz. Set OTEL_EXPORTER_OTLP_ENDPOINT before starting to
export traces (see the README). Logs are in target/dev/. Run target/$profile/demo again for more
sagas. Try the CLI:

  target/$profile/sagactl list
  target/$profile/sagactl get <saga id>
  SAGACTL_TOKEN=$DEV_OPERATOR_TOKEN target/$profile/sagactl replay --all-failed --reason "…" --dry-run

Ctrl-C stops everything.
TXT
wait
