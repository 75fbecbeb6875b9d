#!/usr/bin/env bash
# The scale proof of retention and search (bench/src/bin/scale.rs): seeds a fresh orchestrator
# database with finished sagas of realistic size (history and business keys included), then
# prints table and index sizes, p50/p95/p99 of the dashboard's overview, list and search and of
# ListSagas by key, StartSaga latency with and without retention at work, retention's removal
# rate, and that new sagas reuse the space it frees. PostgreSQL only (no Kafka).
#
#   scripts/scale.sh                         # 1 million sagas over 10 days (≈ 3 GB, ≈ 10 min)
#   scripts/scale.sh --sagas 10000000        # the 10-million figure (≈ 25 GB of disk)
#   scripts/scale.sh --sagas 200000 --keep   # keep the database afterwards (its name is printed)
#   scripts/scale.sh --partitioned           # the alternative: daily partitions, the older half dropped
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$SAGA_ROOT"
ensure_build_tools
ensure_postgres
cargo build --release --quiet -p saga-bench --bin scale
export RUST_LOG="${RUST_LOG:-warn}"
exec "$SAGA_ROOT/target/release/scale" --database-server "postgres://postgres@$PG_HOST:$PG_PORT" "$@"
