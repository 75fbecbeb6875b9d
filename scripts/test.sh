#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts what is missing (PostgreSQL,
# Apache Kafka, headless Chromium, cargo-nextest, cargo-machete), then runs formatting, lints, the
# unused-dependency check and every test against the real services, then the load benchmark's and
# the chaos harness's short runs, the participant conformance kit (Rust and Spring Boot
# participants) and the offline Kubernetes manifest checks.
# Dashboard screenshots land in target/dashboard-screenshots/.
#
#   scripts/test.sh            # everything CI runs
#   scripts/test.sh -- <args>  # extra arguments for the test runner (e.g. a test name filter)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$SAGA_ROOT"

TEST_BROKER_PORT="${TEST_BROKER_PORT:-19092}"
mkdir -p target
broker_pid=""
cleanup() { stop_broker "$broker_pid"; }
trap cleanup EXIT

ensure_build_tools
ensure_nextest
ensure_machete
ensure_python_yaml
ensure_browser
ensure_postgres
drop_test_databases
# A new, empty broker for every run (tests that kill or wipe a broker start brokers of their own).
rm -rf target/test-kafka
broker_pid="$(start_broker "$TEST_BROKER_PORT" target/test-kafka target/test-kafka.log)"

export SAGA_TEST_DATABASE_URL="postgres://postgres@$PG_HOST:$PG_PORT"
export SAGA_TEST_KAFKA_BROKERS="127.0.0.1:$TEST_BROKER_PORT"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
log "cargo machete (unused dependencies)"
cargo machete

extra=()
[ "${1:-}" = "--" ] && shift && extra=("$@")
log "tests"
cargo nextest run --workspace --all-features --no-fail-fast "${extra[@]}"
if [ "${#extra[@]}" -eq 0 ]; then
    # The load benchmark in its short mode, as a smoke test: the real services (debug builds)
    # under a little mixed load, every saga terminal and the databases consistent. No timings.
    log "load benchmark smoke: scripts/bench.sh --short"
    scripts/bench.sh --short
    # The chaos harness in its short mode: every fault kind for 15 s; it fails on any saga lost,
    # applied twice, unfinished or given up, and on any drift between the databases.
    log "chaos harness, short: scripts/chaos.sh --short"
    scripts/chaos.sh --short
    # The participant conformance kit against the Rust participants and the Spring Boot post
    # service (Maven, ~/.m2 kept), then the whole stack with each post service in turn (same outcome).
    log "participant conformance: scripts/conformance.sh --ci"
    scripts/conformance.sh --ci
    log "Kubernetes manifests: scripts/k8s-validate.sh"
    scripts/k8s-validate.sh -q
fi
log "all tests passed"
