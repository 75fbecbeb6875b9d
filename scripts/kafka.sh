#!/usr/bin/env bash
# The local Apache Kafka broker: one KRaft node (broker and controller in one JVM), run from the
# Maven Central artifacts named in scripts/kafka/pom.xml with the project's own
# scripts/kafka/server.properties. Used by dev.sh, test.sh, bench.sh and by tests that need a
# broker of their own (to kill it, wipe it, or give it a SASL_SSL listener). Several nodes make a
# cluster as deployed (replication 3, min.insync.replicas 2): each is a `run` with its own
# directory and ports, the same --cluster-id, --voters naming every node, and --replicas 3.
#
#   scripts/kafka.sh install       # resolve the jars into the cache (once); prints the jar directory
#   scripts/kafka.sh run --dir DIR --port PORT [options]
#                                  # format DIR if it is new, then run the broker in the foreground
#                                  # (exec: the caller's child *is* the JVM, so a signal reaches it)
# run options:
#   --controller-port PORT  the KRaft controller's port (default PORT+1)
#   --listener NAME://HOST:PORT
#                           another listener, advertised as given, whose security protocol is its
#                           name (e.g. SASL_SSL://127.0.0.1:9094); configure it with --set
#   --set KEY=VALUE         a broker property, after (so over) everything else; repeatable
#   --format-arg ARG        passed to the storage formatter when DIR is new (e.g. --add-scram ...)
#   --heap SIZE             maximum heap (default 384m)
#   --node-id N             this node's id (default 1)
#   --voters LIST           the controller quorum, ID@HOST:CONTROLLER_PORT,… (default: this node alone)
#   --cluster-id ID         the cluster id to format a new DIR with (default: a random one; every
#                           node of a cluster needs the same)
#   --replicas N            replicas of every topic and internal topic (default 1; with N > 1,
#                           min.insync.replicas is 2)
#
#   scripts/kafka.sh cluster-id    # prints a new cluster id
#
# A three-node cluster on one machine (three JVMs; what the chaos harness's --brokers 3 runs):
#   id="$(scripts/kafka.sh cluster-id)"; voters=1@127.0.0.1:9101,2@127.0.0.1:9103,3@127.0.0.1:9105
#   for n in 1 2 3; do
#       scripts/kafka.sh run --dir "/tmp/kafka-$n" --port $((9098 + 2 * n)) --node-id "$n" \
#           --voters "$voters" --cluster-id "$id" --replicas 3 --heap 256m &
#   done
#
# The log directory is DIR/data: keep DIR and the broker keeps its topics, messages and consumer
# offsets across restarts; delete it and the next start is a new, empty cluster.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_CONF="$SAGA_ROOT/scripts/kafka"

ensure_java() {
    local v
    v="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
    if [ -z "$v" ] || [ "$v" -lt 17 ]; then
        apt_install openjdk-17-jre-headless
    fi
    command -v mvn >/dev/null || apt_install maven
}

# The jar directory for the pinned POM, resolved once (the cache key is the POM's hash).
kafka_libs() {
    local key dir
    key="$(sha256sum "$KAFKA_CONF/pom.xml" | cut -c1-16)"
    dir="$SAGA_CACHE/kafka/$key"
    if [ ! -f "$dir/.complete" ]; then
        ensure_java
        log "fetching Apache Kafka from Maven Central into $dir (once; about 45 MB)"
        rm -rf "$dir.tmp"
        mkdir -p "$dir.tmp"
        mvn -B -q -f "$KAFKA_CONF/pom.xml" dependency:copy-dependencies \
            -DoutputDirectory="$dir.tmp/libs" >"$dir.tmp/mvn.log" 2>&1 || {
            tail -20 "$dir.tmp/mvn.log" >&2
            die "could not resolve the Kafka artifacts (see $dir.tmp/mvn.log)"
        }
        ls "$dir.tmp/libs"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka_2.13 jar was resolved"
        rm -rf "$dir"
        mv "$dir.tmp" "$dir"
        touch "$dir/.complete"
    fi
    echo "$dir/libs"
}

# A Kafka cluster id: 16 random bytes, base64url without padding.
# A random cluster id: 16 bytes in URL-safe base64, as Kafka's own Uuid.randomUuid makes them —
# including its rule that an id must not start with "-", which the storage tool would read as an
# option ("argument -t/--cluster-id: expected one argument"; one format in 64 failed so).
new_cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [ "${id:0:1}" != "-" ] && break
    done
    printf '%s' "$id"
}

run() {
    local dir="" port="" cport="" heap=384m node_id=1 voters="" cluster_id="" replicas=1
    local sets=() format_args=() extra=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --dir) dir="$2"; shift 2 ;;
            --port) port="$2"; shift 2 ;;
            --controller-port) cport="$2"; shift 2 ;;
            --set) sets+=("$2"); shift 2 ;;
            --listener) extra+=("$2"); shift 2 ;;
            --format-arg) format_args+=("$2"); shift 2 ;;
            --heap) heap="$2"; shift 2 ;;
            --node-id) node_id="$2"; shift 2 ;;
            --voters) voters="$2"; shift 2 ;;
            --cluster-id) cluster_id="$2"; shift 2 ;;
            --replicas) replicas="$2"; shift 2 ;;
            *) die "kafka.sh run: unknown option $1" ;;
        esac
    done
    [ -n "$dir" ] && [ -n "$port" ] || die "kafka.sh run needs --dir and --port"
    cport="${cport:-$((port + 1))}"
    voters="${voters:-$node_id@127.0.0.1:$cport}"
    local isr=1
    [ "$replicas" -gt 1 ] && isr=2
    ensure_java
    local libs
    libs="$(kafka_libs)"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    {
        cat "$KAFKA_CONF/server.properties"
        echo
        echo "# --- this instance (scripts/kafka.sh run) ---"
        local listeners="PLAINTEXT://127.0.0.1:$port" map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT" l
        for l in "${extra[@]}"; do
            listeners="$listeners,$l"
            map="$map,${l%%://*}:${l%%://*}"
        done
        echo "listeners=$listeners,CONTROLLER://127.0.0.1:$cport"
        echo "advertised.listeners=$listeners"
        echo "listener.security.protocol.map=$map"
        echo "node.id=$node_id"
        echo "controller.quorum.voters=$voters"
        echo "log.dirs=$dir/data"
        if [ "$replicas" -gt 1 ]; then
            echo "default.replication.factor=$replicas"
            echo "min.insync.replicas=$isr"
            echo "offsets.topic.replication.factor=$replicas"
            echo "transaction.state.log.replication.factor=$replicas"
            echo "transaction.state.log.min.isr=$isr"
            echo "share.coordinator.state.topic.replication.factor=$replicas"
            echo "share.coordinator.state.topic.min.isr=$isr"
        fi
        local s
        for s in "${sets[@]}"; do echo "$s"; done
    } >"$dir/server.properties"
    local java_opts=(
        -Xms64m "-Xmx$heap" -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError
        -Djava.awt.headless=true
        "-Dlog4j2.configurationFile=$KAFKA_CONF/log4j2.properties"
    )
    if [ ! -f "$dir/data/meta.properties" ]; then
        java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format \
            -t "${cluster_id:-$(new_cluster_id)}" -c "$dir/server.properties" "${format_args[@]}" >"$dir/format.log" 2>&1 || {
            cat "$dir/format.log" >&2
            die "formatting $dir/data failed"
        }
    fi
    exec java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka "$dir/server.properties"
}

case "${1:-}" in
    install) kafka_libs ;;
    cluster-id) new_cluster_id; echo ;;
    run) shift; run "$@" ;;
    *) die "usage: scripts/kafka.sh install | cluster-id | run --dir DIR --port PORT [options]" ;;
esac
