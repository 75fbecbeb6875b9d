#!/usr/bin/env bash
# Brings up everything on this machine — PostgreSQL, Apache Kafka, the orchestrator, the user
# service and the post service — and runs the demo. Installs what is missing. The broker's log
# (in ~/.cache/saga-coordinator/dev-kafka) and the three databases are kept across runs: stop it,
# start it again, and the sagas of the last run are still there.
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
begin_stack
broker_pid="$(start_broker "$BROKER_PORT" "$SAGA_CACHE/dev-kafka" "$LOGS/broker.log")"

log "building ($profile)"
if [ "$profile" = release ]; then
    cargo build --release --quiet --bins
else
    cargo build --quiet --bins
fi
bin="$SAGA_ROOT/target/$profile"

export APP_KAFKA__BROKERS="127.0.0.1:$BROKER_PORT"
export RUST_LOG="${RUST_LOG:-info}"

# A development operator credential for sagactl (export SAGACTL_TOKEN to use it).
DEV_OPERATOR_TOKEN="${DEV_OPERATOR_TOKEN:-dev-operator-token-change-me}"

log "starting orchestrator, user-service, post-service (logs: target/dev/)"
APP_GRPC__LISTEN="127.0.0.1:$GRPC_PORT" APP_AUTH__OPERATORS__DEV="$DEV_OPERATOR_TOKEN" \
    APP_AUDIT__PARTICIPANTS__USERS=http://127.0.0.1:8081 APP_AUDIT__PARTICIPANTS__POSTS=http://127.0.0.1:8082 \
    APP_AUDIT__CROSS_CHECKS__AUTHORS_REPLICATE_USERS="users.users = posts.authors" \
    APP_AUDIT__CROSS_CHECKS__POST_COUNTS_AGREE="users.post_counts = posts.post_counts" \
    "$bin/orchestrator" >"$LOGS/orchestrator.log" 2>&1 &
pids+=("$!")
for svc in user-service post-service; do
    # The dedup window is checked against the orchestrator's reach before any inbox record is pruned.
    APP_DEDUP__ORCHESTRATOR_URL=http://127.0.0.1:8080 "$bin/$svc" >"$LOGS/$svc.log" 2>&1 &
    pids+=("$!")
done
wait_port 127.0.0.1 "$GRPC_PORT" 60 "the orchestrator"

log "running the demo"
status=0
DEMO_OPERATOR_TOKEN="$DEV_OPERATOR_TOKEN" "$bin/demo" --orchestrator "http://127.0.0.1:$GRPC_PORT" || status=$?
if $once; then
    exit "$status"
fi
cat <<TXT

The stack is up: orchestrator gRPC on 127.0.0.1:$GRPC_PORT (reflection on), Apache Kafka on
127.0.0.1:$BROKER_PORT (log: $SAGA_CACHE/dev-kafka), databases saga_orchestrator / saga_users /
saga_posts on $PG_HOST:$PG_PORT — all kept when you stop and start again.
Dashboard: http://127.0.0.1:8080/ (sign in with $DEV_OPERATOR_TOKEN to act).
Metrics and health: http://127.0.0.1:8080/metrics (orchestrator), :8081 (user-service), :8082
(post-service), each with /healthz and /readyz; \`sagactl audit --since 1h\` checks that the
services' records agree. Set OTEL_EXPORTER_OTLP_ENDPOINT before starting to
export traces (see the README). Logs are in target/dev/. Run target/$profile/demo again for more
sagas. Try the CLI:

  target/$profile/sagactl list
  target/$profile/sagactl get <saga id>
  SAGACTL_TOKEN=$DEV_OPERATOR_TOKEN target/$profile/sagactl replay --all-failed --reason "…" --dry-run

Ctrl-C stops everything.
TXT
wait
