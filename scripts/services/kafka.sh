#!/usr/bin/env bash
# kafka.sh — a real, throwaway, single-node Apache Kafka broker (KRaft, combined
# broker+controller) on loopback, for meltstream's integration tests.
#
#   kafka.sh start         fetch jars (Maven Central, cached), format, start, wait until ready
#   kafka.sh status        exit 0 if running, 1 if not
#   kafka.sh env           print `export KAFKA_BOOTSTRAP=...` lines (eval "$(kafka.sh env)")
#   kafka.sh smoke         produce/consume + transactional abort check (Python confluent-kafka)
#   kafka.sh stop-server   stop the broker, keep its data (start again with `start`)
#   kafka.sh stop          stop the broker and delete its data dir
#
# Knobs: KAFKA_VERSION (4.1.1), KAFKA_PORT (19092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1),
#   KAFKA_PARTITIONS (4), KAFKA_HEAP (-Xmx512m -Xms128m), KAFKA_START_TIMEOUT (90 s),
#   MELTSTREAM_CACHE (~/.cache/meltstream), MELTSTREAM_SERVICES_DIR (/tmp/meltstream-services),
#   KAFKA_MVN_ARGS (extra mvn args, e.g. -o or -Dmaven.repo.local=...).
# Needs: java 17+, mvn (first run only, when the jars are not cached yet), bash.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
LOG4J_VERSION="${LOG4J_VERSION:-2.24.3}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_PARTITIONS="${KAFKA_PARTITIONS:-4}"
KAFKA_HEAP="${KAFKA_HEAP:--Xmx512m -Xms128m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
CACHE="${MELTSTREAM_CACHE:-$HOME/.cache/meltstream}"
SERVICES_DIR="${MELTSTREAM_SERVICES_DIR:-/tmp/meltstream-services}"

DIST="$CACHE/kafka-$KAFKA_VERSION"   # cached jars: $DIST/lib/*.jar
RUN="$SERVICES_DIR/kafka"            # throwaway: config, data, log, pid
PIDFILE="$RUN/kafka.pid"
LOG="$RUN/broker.log"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"

log() { echo "kafka.sh: $*" >&2; }
die() { echo "kafka.sh: ERROR: $*" >&2; exit 1; }

# Fail early, naming every missing tool and how to install it.
need_tools() {
  local -a missing=() pkgs=()
  if ! command -v java >/dev/null 2>&1; then
    missing+=(java); pkgs+=(openjdk-17-jre-headless)
  fi
  if [[ ! -f "$DIST/.complete" ]] && ! command -v mvn >/dev/null 2>&1; then
    missing+=("mvn (needed once, to fetch Kafka $KAFKA_VERSION from Maven Central)"); pkgs+=(maven)
  fi
  if ((${#missing[@]})); then
    die "missing: ${missing[*]}. Install: apt-get install -y ${pkgs[*]}"
  fi
  local v
  v="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
  if [[ -n "$v" && "$v" -lt 17 ]]; then
    die "java $v found, Kafka $KAFKA_VERSION needs Java 17+. Install: apt-get install -y openjdk-17-jre-headless (or set PATH/JAVA_HOME to a Java 17+)"
  fi
}

# Fetch the broker's jars from Maven Central once; later runs use the cache and need no mvn.
fetch_jars() {
  if [[ -f "$DIST/.complete" ]]; then return 0; fi
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $DIST/lib ..."
  rm -rf "$DIST"
  mkdir -p "$DIST"
  cat >"$DIST/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>meltstream.services</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-server</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-storage</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-raft</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-metadata</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  # shellcheck disable=SC2086 # KAFKA_MVN_ARGS is a word list on purpose
  if ! (cd "$DIST" && mvn -B -q ${KAFKA_MVN_ARGS:-} dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$DIST/lib" >"$DIST/mvn.log" 2>&1); then
    tail -n 40 "$DIST/mvn.log" >&2 || true
    die "mvn could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION (log: $DIST/mvn.log)"
  fi
  ls "$DIST/lib/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null 2>&1 || die "kafka_2.13 jar missing after mvn"
  touch "$DIST/.complete"
}

pid_alive() {
  local pid
  [[ -f "$PIDFILE" ]] || return 1
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_config() {
  mkdir -p "$RUN/data"
  cat >"$RUN/server.properties" <<EOF
# generated by scripts/services/kafka.sh — throwaway single-node KRaft broker
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$RUN/data
num.partitions=$KAFKA_PARTITIONS
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
# Room for the replay state a Kafka sink stores with its offsets (its metadata_max_bytes).
offset.metadata.max.bytes=1048576
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# after a kill -9 the restarted broker must wait for its old session to expire
# (DUPLICATE_BROKER_REGISTRATION): keep that short (defaults 9000/2000)
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
auto.create.topics.enable=true
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
EOF
  cat >"$RUN/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
}

java_cmd() {
  local -a heap extra
  read -r -a heap <<<"$KAFKA_HEAP"
  read -r -a extra <<<"${KAFKA_JVM_OPTS:-}"
  JAVA_CMD=(java "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$RUN/log4j2.properties" "${extra[@]}" -cp "$DIST/lib/*")
}

cmd_start() {
  need_tools
  if pid_alive; then
    log "already running (pid $(cat "$PIDFILE")) on $BOOTSTRAP"
    return 0
  fi
  fetch_jars
  if port_open "$KAFKA_PORT" || port_open "$KAFKA_CONTROLLER_PORT"; then
    die "port $KAFKA_PORT or $KAFKA_CONTROLLER_PORT is already in use by something else; set KAFKA_PORT"
  fi
  mkdir -p "$RUN"
  write_config
  java_cmd
  if [[ ! -f "$RUN/data/meta.properties" ]]; then
    local cluster_id
    # a Kafka cluster id is 16 random bytes, base64url without padding
    cluster_id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    "${JAVA_CMD[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$RUN/server.properties" \
      >"$RUN/format.log" 2>&1 || { cat "$RUN/format.log" >&2; die "formatting $RUN/data failed"; }
  fi
  log "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (controller :$KAFKA_CONTROLLER_PORT, log $LOG)"
  # a fresh log per start, so the readiness grep cannot match an older run's line
  if [[ -s "$LOG" ]]; then mv -f "$LOG" "$LOG.prev"; fi
  rm -f "$PIDFILE"
  # the wrapper writes its own pid, then execs java: the pid file holds the broker's pid
  # setsid: the broker outlives the caller's process group (Ctrl-C, test harness teardown)
  local -a detach=(nohup)
  if command -v setsid >/dev/null 2>&1; then detach=(setsid nohup); fi
  # shellcheck disable=SC2016 # $$ and $1 are for the inner shell
  "${detach[@]}" bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
    "${JAVA_CMD[@]}" kafka.Kafka "$RUN/server.properties" >>"$LOG" 2>&1 </dev/null &
  local start=$SECONDS pid
  # ready = the broker logged "Kafka Server started" (KafkaRaftServer) AND the port accepts connections
  while true; do
    sleep 0.5
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$LOG" >&2 || true
      rm -f "$PIDFILE"
      die "broker exited during start-up (log: $LOG)"
    fi
    if grep -q 'Kafka Server started' "$LOG" 2>/dev/null && port_open "$KAFKA_PORT"; then
      break
    fi
    if ((SECONDS - start >= KAFKA_START_TIMEOUT)); then
      tail -n 40 "$LOG" >&2 || true
      cmd_stop_server
      die "broker not ready on $BOOTSTRAP after ${KAFKA_START_TIMEOUT}s; killed it (log: $LOG)"
    fi
  done
  log "ready on $BOOTSTRAP after $((SECONDS - start))s (pid $pid)"
}

cmd_stop_server() {
  local pid
  if ! pid_alive; then
    rm -f "$PIDFILE"
    log "not running"
    return 0
  fi
  pid="$(cat "$PIDFILE")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "broker (pid $pid) did not stop in 30s; killing"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}

cmd_stop() {
  cmd_stop_server
  rm -rf "$RUN"
  log "removed $RUN"
}

cmd_status() {
  if pid_alive; then
    echo "kafka: running (pid $(cat "$PIDFILE")) on $BOOTSTRAP, data $RUN/data"
  else
    echo "kafka: not running"
    return 1
  fi
}

cmd_env() {
  echo "export KAFKA_BOOTSTRAP=$BOOTSTRAP"
  echo "export KAFKA_PORT=$KAFKA_PORT"
  echo "export KAFKA_VERSION=$KAFKA_VERSION"
}

cmd_smoke() {
  pid_alive || die "broker not running; run: $0 start"
  local py
  py="$("$HERE/pyenv.sh")"
  KAFKA_BOOTSTRAP="$BOOTSTRAP" "$py" "$HERE/kafka_smoke.py"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  stop-server) cmd_stop_server ;;
  start-server) cmd_start ;;
  status) cmd_status ;;
  env) cmd_env ;;
  smoke) cmd_smoke ;;
  *)
    echo "usage: $0 {start|stop|status|env|smoke|stop-server|start-server}" >&2
    exit 2
    ;;
esac
