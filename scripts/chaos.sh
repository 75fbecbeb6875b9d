#!/usr/bin/env bash
# The chaos harness: a stack of its own — a PostgreSQL cluster of its own (so restarting it
# disturbs nothing else), an Apache Kafka broker, two orchestrator replicas, the user service and
# the post service, each a process — driven with a mixed workload through the gRPC API (every
# built-in saga type: register_user, publish_post, and moderated_post with its parallel group, a
# few approved or rejected by the harness as a moderator) while the harness SIGKILLs and SIGTERMs
# services and restarts PostgreSQL and the broker, and retention, legal holds and bulk hold and
# release jobs work beside it. It then waits for quiet and reports, per fault
# and per kind of request, what became of every saga (bench/src/bin/chaos/); it exits non-zero
# on any saga lost, applied twice, unfinished, compensated because of a timeout or otherwise than
# intended, on a held saga removed or a bulk job not completed, or on any disagreement between the
# databases.
#
#   scripts/chaos.sh                       # every fault for 90 s each, 30 sagas/s (release build)
#   scripts/chaos.sh --short               # CI: every fault for 15 s each (debug build)
#   scripts/chaos.sh --seed 42 --only kill # replay one run's fault schedule; one fault kind
#
# The Kafka cluster is three nodes as deployed (replication 3, min.insync.replicas 2), which adds
# the cluster's own faults: the leader of a partition killed, a broker stalled (SIGSTOP) for 30 s,
# the active controller killed, a rolling restart. CHAOS_BROKERS=1 runs one node instead.
#
# CHAOS_BROKER_PORT (default 29392; node k listens on PORT+2(k-1), its controller on the port
# after) and CHAOS_PG_PORT (5433) choose the harness's own brokers and PostgreSQL cluster; it
# refuses a broker port already taken.
#
# Other arguments pass through to the harness (see `target/release/chaos --help`).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$SAGA_ROOT"

CHAOS_PG_CLUSTER=chaos
CHAOS_PG_PORT="${CHAOS_PG_PORT:-5433}"
CHAOS_BROKER_PORT="${CHAOS_BROKER_PORT:-29392}"
CHAOS_BROKERS="${CHAOS_BROKERS:-3}"
LOGS="$SAGA_ROOT/target/chaos"

short=false
args=()
for a in "$@"; do
    if [ "$a" = "--short" ]; then short=true; else args+=("$a"); fi
done
$short && args=(--phase-secs 15 --rate 20 "${args[@]}")

ensure_build_tools
ensure_postgres
for ((port = CHAOS_BROKER_PORT; port < CHAOS_BROKER_PORT + 2 * CHAOS_BROKERS; port++)); do
    port_open 127.0.0.1 "$port" &&
        die "something already listens on 127.0.0.1:$port; the chaos harness wants a broker of its own (CHAOS_BROKER_PORT)"
done
"$SAGA_ROOT/scripts/kafka.sh" install >/dev/null

# A PostgreSQL cluster for the harness alone, created once; the harness stops and starts it.
ver="$(ls /usr/lib/postgresql | sort -V | tail -1)"
if ! pg_lsclusters -h 2>/dev/null | grep -q "^$ver $CHAOS_PG_CLUSTER "; then
    log "creating the PostgreSQL cluster $ver/$CHAOS_PG_CLUSTER on port $CHAOS_PG_PORT (once)"
    as_root pg_createcluster "$ver" "$CHAOS_PG_CLUSTER" --port "$CHAOS_PG_PORT" >/dev/null
    hba="/etc/postgresql/$ver/$CHAOS_PG_CLUSTER/pg_hba.conf"
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
fi
as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$CHAOS_PG_CLUSTER" start 2>/dev/null || true
for ((i = 0; i < 100; i++)); do
    pg_isready -q -h "$PG_HOST" -p "$CHAOS_PG_PORT" && break
    sleep 0.2
done
pg_isready -q -h "$PG_HOST" -p "$CHAOS_PG_PORT" || die "the chaos PostgreSQL cluster did not start"

if $short; then
    profile=debug
    cargo build --quiet --bins
else
    profile=release
    cargo build --release --quiet --bins
fi
rm -rf "$LOGS"
mkdir -p "$LOGS"
exec "$SAGA_ROOT/target/$profile/chaos" \
    --bin-dir "$SAGA_ROOT/target/$profile" \
    --kafka-script "$SAGA_ROOT/scripts/kafka.sh" \
    --work-dir "$LOGS" \
    --database "postgres://postgres@$PG_HOST:$CHAOS_PG_PORT" \
    --pg-ctl "pg_ctlcluster --skip-systemctl-redirect $ver $CHAOS_PG_CLUSTER" \
    --broker-port "$CHAOS_BROKER_PORT" \
    --brokers "$CHAOS_BROKERS" \
    "${args[@]}"
