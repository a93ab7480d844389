#!/usr/bin/env bash
# Starts the production backends for tests and development on this machine:
# PostgreSQL (Debian packages, cluster <ver>/main on 127.0.0.1:5432, tuned for a test box)
# and Apache Kafka in KRaft mode (jars from Maven Central, cached in ~/.cache/herald).
#
#   scripts/services.sh start|stop|status|env|restart-kafka|restart-postgres
#   scripts/services.sh start-kafka|stop-kafka|kill-kafka
#   scripts/services.sh start-postgres|stop-postgres|drop-postgres
#
# HERALD_KAFKA_DATA, HERALD_KAFKA_PORT and HERALD_KAFKA_CONTROLLER_PORT run a second,
# private broker beside the shared one (the fault tests stop and kill theirs).
# HERALD_PG_CLUSTER and HERALD_PG_PORT do the same for PostgreSQL: a private cluster
# (`herald chaos` restarts its own); drop-postgres removes such a cluster, never `main`.
# Every command is idempotent: `start` with everything running does nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${HERALD_CACHE_DIR:-$HOME/.cache/herald}"

KAFKA_VERSION="${HERALD_KAFKA_VERSION:-4.4.0}"
LOG4J_VERSION=2.25.5 # the log4j-core version kafka_2.13 brings; its slf4j 1.x binding must match
KAFKA_HOME="$CACHE/kafka/$KAFKA_VERSION"
KAFKA_DATA="${HERALD_KAFKA_DATA:-$CACHE/kafka-data}"
KAFKA_PID="$KAFKA_DATA/kafka.pid"
KAFKA_LOG="$KAFKA_DATA/kafka.log"
KAFKA_HOST=127.0.0.1
KAFKA_PORT="${HERALD_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${HERALD_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_START_TIMEOUT="${HERALD_KAFKA_START_TIMEOUT:-90}"

PG_HOST=127.0.0.1
PG_PORT="${HERALD_PG_PORT:-5432}"
PG_CLUSTER="${HERALD_PG_CLUSTER:-main}"
PG_USER=herald
PG_PASSWORD=herald
PG_DB=herald

log() { echo "services: $*" >&2; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# ---------------------------------------------------------------------------- PostgreSQL

pg_version() {
    find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n1 \
        || true
}

pg_install() {
    local ver
    ver="$(pg_version)"
    if command -v pg_ctlcluster >/dev/null && [ -n "$ver" ] \
        && [ -x "/usr/lib/postgresql/$ver/bin/postgres" ]; then
        return 0
    fi
    log "installing PostgreSQL from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
}

pg_configure() {
    local ver="$1" conf_dir="/etc/postgresql/$1/$PG_CLUSTER"
    if [ ! -f "$conf_dir/postgresql.conf" ]; then
        log "creating cluster $ver/$PG_CLUSTER"
        pg_createcluster "$ver" "$PG_CLUSTER" --port "$PG_PORT" >/dev/null
    fi
    mkdir -p "$conf_dir/conf.d"
    # Test box settings: durability traded for speed (a crash loses only test data).
    cat >"$conf_dir/conf.d/herald.conf.new" <<EOF
listen_addresses = '$PG_HOST'
port = $PG_PORT
max_connections = 200
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
max_wal_size = 1GB
checkpoint_timeout = 30min
# Loopback only: TLS would cost both ends CPU on every statement for nothing.
ssl = off
# herald bench counts statements per delivery from pg_stat_statements (loaded only at
# server start: a running server picks this up at its next restart). Room for the test
# suite's many databases, each with its own entries, so the bench's are not evicted.
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.max = 20000
pg_stat_statements.track = top
EOF
    if ! cmp -s "$conf_dir/conf.d/herald.conf.new" "$conf_dir/conf.d/herald.conf"; then
        mv "$conf_dir/conf.d/herald.conf.new" "$conf_dir/conf.d/herald.conf"
        chown -R postgres:postgres "$conf_dir/conf.d"
        PG_CONFIG_CHANGED=1
    else
        rm -f "$conf_dir/conf.d/herald.conf.new"
    fi
}

pg_running() {
    local ver
    ver="$(pg_version)"
    [ -n "$ver" ] && command -v pg_ctlcluster >/dev/null \
        && pg_ctlcluster "$ver" "$PG_CLUSTER" status >/dev/null 2>&1
}

pg_wait() {
    local deadline=$((SECONDS + 60))
    until pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "/var/log/postgresql/postgresql-$(pg_version)-$PG_CLUSTER.log" >&2 || true
            die "PostgreSQL did not answer on $PG_HOST:$PG_PORT within 60 s (log tail above)"
        fi
        sleep 0.2
    done
}

pg_psql() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" "$@"; }

pg_create_role_and_db() {
    pg_psql -d postgres <<EOF
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') THEN
        CREATE ROLE $PG_USER LOGIN SUPERUSER PASSWORD '$PG_PASSWORD';
    END IF;
END
\$\$;
EOF
    if [ -z "$(pg_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]
    then
        pg_psql -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
    fi
}

pg_start() {
    PG_CONFIG_CHANGED=0
    pg_install
    local ver
    ver="$(pg_version)"
    pg_configure "$ver"
    if pg_running; then
        if [ "$PG_CONFIG_CHANGED" = 1 ]; then
            log "PostgreSQL settings changed: restarting"
            pg_ctlcluster "$ver" "$PG_CLUSTER" restart -m fast
        fi
    else
        log "starting PostgreSQL $ver/$PG_CLUSTER"
        pg_ctlcluster "$ver" "$PG_CLUSTER" start
    fi
    pg_wait
    pg_create_role_and_db
}

pg_stop() {
    if pg_running; then
        log "stopping PostgreSQL"
        pg_ctlcluster "$(pg_version)" "$PG_CLUSTER" stop -m fast
    fi
}

pg_restart() {
    if pg_running; then
        log "restarting PostgreSQL"
        pg_ctlcluster "$(pg_version)" "$PG_CLUSTER" restart -m fast
        pg_wait
    else
        pg_start
    fi
}

pg_drop() {
    [ "$PG_CLUSTER" != main ] || die "drop-postgres removes private clusters only (HERALD_PG_CLUSTER)"
    local ver
    ver="$(pg_version)"
    if [ -n "$ver" ] && [ -d "/etc/postgresql/$ver/$PG_CLUSTER" ]; then
        log "dropping PostgreSQL cluster $ver/$PG_CLUSTER"
        pg_dropcluster --stop "$ver" "$PG_CLUSTER"
    fi
}

pg_status() {
    if pg_running && pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
        echo "postgresql: running ($(pg_version)/$PG_CLUSTER on $PG_HOST:$PG_PORT)"
    else
        echo "postgresql: stopped"
        return 1
    fi
}

# ---------------------------------------------------------------------------------- Kafka

kafka_fetch() {
    [ -f "$KAFKA_HOME/libs/.complete" ] && return 0
    command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch Kafka: apt-get install maven"
    log "fetching Kafka $KAFKA_VERSION and its dependencies from Maven Central"
    local work="$KAFKA_HOME/fetch"
    rm -rf "$work" "$KAFKA_HOME/libs"
    mkdir -p "$work"
    cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>herald.services</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    mvn -B -q -f "$work/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
        dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$KAFKA_HOME/libs" >"$work/mvn.log" 2>&1 \
        || { tail -n 40 "$work/mvn.log" >&2; die "Maven could not fetch Kafka $KAFKA_VERSION"; }
    [ -f "$KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13 jar missing after fetch"
    touch "$KAFKA_HOME/libs/.complete"
}

kafka_write_config() {
    mkdir -p "$KAFKA_DATA/logs"
    cat >"$KAFKA_DATA/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA/logs
num.partitions=12
num.network.threads=2
num.io.threads=4
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Tests use short consumer session timeouts (a killed consumer's partitions move quickly).
group.min.session.timeout.ms=1000
log.retention.hours=24
log.segment.bytes=67108864
EOF
    cat >"$KAFKA_DATA/log4j2.properties" <<EOF
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka
logger.clients.level = WARN
EOF
}

# A class data sharing archive, dumped when the first broker exits, more than halves the
# broker's startup time on later starts (restart-kafka in fault tests).
kafka_java_cmd() {
    local cds="-XX:ArchiveClassesAtExit=$KAFKA_HOME/kafka.jsa"
    [ -s "$KAFKA_HOME/kafka.jsa" ] && cds="-XX:SharedArchiveFile=$KAFKA_HOME/kafka.jsa"
    # shellcheck disable=SC2206 # HERALD_KAFKA_JAVA_OPTS is a list of words by design
    KAFKA_CMD=(java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true ${HERALD_KAFKA_JAVA_OPTS:-}
        "-Dlog4j2.configurationFile=$KAFKA_DATA/log4j2.properties"
        -cp "$KAFKA_HOME/libs/*" "$@")
    [ "${1:-}" = kafka.Kafka ] && KAFKA_CMD=("${KAFKA_CMD[0]}" "$cds" "${KAFKA_CMD[@]:1}")
    return 0
}

kafka_format() {
    [ -f "$KAFKA_DATA/logs/meta.properties" ] && return 0
    local cluster_id
    # Like Kafka's own Uuid.randomUuid: never starting with "-", which the tool would read
    # as an option (one id in 64 did).
    cluster_id="$(python3 -c 'import base64, uuid
while (i := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]).startswith("-"): pass
print(i)')"
    log "formatting Kafka storage (cluster $cluster_id)"
    kafka_java_cmd kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DATA/server.properties"
    "${KAFKA_CMD[@]}" >"$KAFKA_DATA/format.log" 2>&1 \
        || { cat "$KAFKA_DATA/format.log" >&2; die "formatting Kafka storage failed"; }
}

kafka_pid() {
    local pid
    pid="$(cat "$KAFKA_PID" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' \
        && echo "$pid"
}

kafka_ready() {
    port_open "$KAFKA_HOST" "$KAFKA_PORT" || return 1
    grep -q 'Kafka Server started' "$KAFKA_LOG" 2>/dev/null || return 1
    local py="$ROOT/.venv/bin/python"
    [ -x "$py" ] || return 0
    # A real metadata request: the port can be open before the broker serves requests.
    "$py" - "$KAFKA_HOST:$KAFKA_PORT" <<'EOF' 2>/dev/null
import sys
try:
    from confluent_kafka.admin import AdminClient
except ImportError:  # a venv not bootstrapped yet: the port and the log line have to do
    sys.exit(0)
AdminClient({"bootstrap.servers": sys.argv[1]}).list_topics(timeout=3)
EOF
}

# Starts the broker without waiting for it (kafka_wait does), so PostgreSQL can start meanwhile.
kafka_launch() {
    kafka_pid >/dev/null && return 0
    if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
        die "port $KAFKA_PORT is taken by another process (not the broker started by this script)"
    fi
    command -v java >/dev/null || die "Java 17+ is needed for Kafka: apt-get install openjdk-17-jre-headless"
    kafka_fetch
    kafka_write_config
    kafka_format
    log "starting Kafka $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT"
    : >"$KAFKA_LOG"
    kafka_java_cmd kafka.Kafka "$KAFKA_DATA/server.properties"
    # setsid and nohup exec the JVM, so $! is the broker's pid; its own session keeps it
    # alive when the calling shell or its process group goes away.
    setsid nohup "${KAFKA_CMD[@]}" >>"$KAFKA_LOG" 2>&1 </dev/null &
    echo $! >"$KAFKA_PID"
}

kafka_wait() {
    local deadline=$((SECONDS + KAFKA_START_TIMEOUT)) launched
    launched="$(cat "$KAFKA_PID" 2>/dev/null)"
    until kafka_ready; do
        # Alive is enough for the pid just launched: until the forked shell has exec'd the
        # JVM, /proc/<pid>/cmdline is still the shell's, and kafka_pid would call a broker
        # that is starting dead (under load it did: "exited during startup", empty log).
        if ! { [ -n "$launched" ] && kill -0 "$launched" 2>/dev/null; }; then
            tail -n 40 "$KAFKA_LOG" >&2
            die "Kafka exited during startup (log tail above, full log: $KAFKA_LOG)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 40 "$KAFKA_LOG" >&2
            die "Kafka did not answer on $KAFKA_HOST:$KAFKA_PORT within ${KAFKA_START_TIMEOUT}s (log: $KAFKA_LOG)"
        fi
        sleep 0.3
    done
}

kafka_start() {
    kafka_launch
    kafka_wait
}

kafka_kill() {
    local pid
    pid="$(kafka_pid)" || return 0
    log "killing Kafka (pid $pid) with SIGKILL"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$KAFKA_PID"
}

kafka_stop() {
    local pid
    pid="$(kafka_pid)" || { rm -f "$KAFKA_PID"; return 0; }
    log "stopping Kafka (pid $pid)"
    kill -TERM "$pid"
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "Kafka did not stop within 60 s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$KAFKA_PID"
}

kafka_status() {
    local pid
    if pid="$(kafka_pid)" && kafka_ready; then
        echo "kafka: running (pid $pid, $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT, data $KAFKA_DATA)"
    elif pid="$(kafka_pid)"; then
        echo "kafka: starting or unresponsive (pid $pid, log $KAFKA_LOG)"
        return 1
    else
        echo "kafka: stopped"
        return 1
    fi
}

# ----------------------------------------------------------------------------------- main

print_env() {
    echo "export HERALD_DATABASE_URL=postgresql://$PG_USER:$PG_PASSWORD@$PG_HOST:$PG_PORT/$PG_DB"
    echo "export HERALD_KAFKA_BOOTSTRAP=$KAFKA_HOST:$KAFKA_PORT"
}

status() {
    local rc=0
    pg_status || rc=3
    kafka_status || rc=3
    return "$rc"
}

usage() {
    echo "usage: $0 start|stop|status|env|restart-kafka|restart-postgres|start-kafka|stop-kafka|kill-kafka|start-postgres|stop-postgres|drop-postgres" >&2
    exit 2
}

[ "$(id -u)" = 0 ] || [ "${1:-}" = env ] || die "run as root (it installs packages and runs pg_ctlcluster)"

case "${1:-}" in
    start)
        kafka_launch
        pg_start
        kafka_wait
        status
        ;;
    stop)
        kafka_stop
        pg_stop
        ;;
    status) status ;;
    env) print_env ;;
    restart-kafka)
        kafka_stop
        kafka_start
        kafka_status
        ;;
    restart-postgres)
        pg_restart
        pg_status
        ;;
    start-kafka)
        kafka_start
        kafka_status
        ;;
    stop-kafka) kafka_stop ;;
    start-postgres)
        pg_start
        pg_status
        ;;
    stop-postgres) pg_stop ;;
    drop-postgres) pg_drop ;;
    kill-kafka) kafka_kill ;;
    *) usage ;;
esac
