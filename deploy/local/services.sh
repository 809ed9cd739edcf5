#!/usr/bin/env bash
# Local Apache Kafka broker (KRaft) + OpenSearch node for aitrail, without Docker.
# Every artefact comes from Maven Central through `mvn`. See deploy/local/README.md.
#
#   services.sh up     [kafka|opensearch]   fetch (once), start in the background, wait until healthy
#   services.sh down   [kafka|opensearch]   stop what this script started (SIGTERM, then SIGKILL)
#   services.sh status [kafka|opensearch]   exit 0 only if every named service runs and is healthy
#   services.sh logs   [kafka|opensearch]   tail the logs
#   services.sh smoke  [kafka|opensearch]   end-to-end check (aiokafka produce/consume; OpenSearch template/search/aggs)
#   services.sh fetch  [kafka|opensearch]   download artefacts only
#   services.sh reset  [kafka|opensearch]   stop and delete the data (the download cache stays)
#
# Kafka on 127.0.0.1:9092, OpenSearch on http://127.0.0.1:9200. Settings: AITRAIL_SERVICES_DIR,
# AITRAIL_SERVICES_TIMEOUT, AITRAIL_SERVICES_*_VERSION, ... (see deploy/local/README.md).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

# ----------------------------------------------------------------------------- settings
KAFKA_VERSION="${AITRAIL_SERVICES_KAFKA_VERSION:-4.3.1}"
OPENSEARCH_VERSION="${AITRAIL_SERVICES_OPENSEARCH_VERSION:-2.19.6}"
KAFKA_HEAP="${AITRAIL_SERVICES_KAFKA_HEAP:-512m}"
OPENSEARCH_HEAP="${AITRAIL_SERVICES_OPENSEARCH_HEAP:-1g}"
START_TIMEOUT="${AITRAIL_SERVICES_TIMEOUT:-180}"      # seconds to become healthy
STOP_TIMEOUT="${AITRAIL_SERVICES_STOP_TIMEOUT:-60}"   # seconds between SIGTERM and SIGKILL
CACHE="${AITRAIL_SERVICES_CACHE:-$HERE/.cache}"
if [[ -n "${AITRAIL_SERVICES_DIR:-}" ]]; then
  mkdir -p "$AITRAIL_SERVICES_DIR"
  BASE="$(cd "$AITRAIL_SERVICES_DIR" && pwd)"
  DATA="$BASE/data"
  RUN="$BASE/run"
else
  DATA="$HERE/.data"
  RUN="$HERE/.run"
fi

KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
OPENSEARCH_PORT=9200
OPENSEARCH_TRANSPORT_PORT=9300
ALL_SERVICES=(kafka opensearch)

KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
OPENSEARCH_HOME="$CACHE/opensearch-$OPENSEARCH_VERSION"

# ----------------------------------------------------------------------------- helpers
say()  { printf '%s\n' "services: $*"; }
warn() { printf '%s\n' "services: WARNING: $*" >&2; }
die()  { printf '%s\n' "services: ERROR: $*" >&2; exit 1; }

usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

sha() {
  if command -v sha256sum >/dev/null 2>&1; then cat "$@" | sha256sum | cut -c1-16
  else cat "$@" | shasum -a 256 | cut -c1-16; fi
}

pick_java() {
  local home="${AITRAIL_SERVICES_JAVA_HOME:-${JAVA_HOME:-}}"
  if [[ -n "$home" && -x "$home/bin/java" ]]; then
    JAVA="$home/bin/java"
  elif command -v java >/dev/null 2>&1; then
    JAVA="$(command -v java)"
  else
    die "no java found: install a JDK 17 (apt-get install openjdk-17-jdk-headless) or set AITRAIL_SERVICES_JAVA_HOME"
  fi
  JAVA="$(readlink -f "$JAVA")"
  JAVA_MAJOR="$("$JAVA" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2; exit}')"
  JAVA_MAJOR="${JAVA_MAJOR%%.*}"
  [[ "$JAVA_MAJOR" =~ ^[0-9]+$ ]] || die "cannot tell the version of $JAVA"
  (( JAVA_MAJOR >= 17 )) || die "$JAVA is Java $JAVA_MAJOR; Kafka 4 and OpenSearch 2.19 need Java 17+ (set AITRAIL_SERVICES_JAVA_HOME)"
}

need_mvn() {
  command -v mvn >/dev/null 2>&1 || die "mvn not found: it fetches the artefacts from Maven Central (apt-get install maven)"
}

mvn_copy() { # pom outdir version-property version
  local pom="$1" out="$2" prop="$3" ver="$4"
  need_mvn
  rm -rf "$out.tmp"
  mkdir -p "$CACHE/m2"
  if ! mvn -B -q -f "$pom" -Dmaven.repo.local="$CACHE/m2" "-D$prop=$ver" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$out.tmp/lib" \
        >"$RUN/fetch.log" 2>&1; then
    tail -n 30 "$RUN/fetch.log" >&2
    die "maven could not resolve $pom (version $ver); full output in $RUN/fetch.log"
  fi
}

port_open() { # port -> 0 if something accepts connections on 127.0.0.1:port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

python_with_aiokafka() {
  local py
  for py in "${AITRAIL_SERVICES_PYTHON:-}" "$REPO/.venv/bin/python" python3; do
    [[ -n "$py" ]] || continue
    command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import aiokafka' >/dev/null 2>&1; then echo "$py"; return 0; fi
  done
  return 1
}

http_get() { # url -> body on stdout, non-zero on failure
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -m 15 "$1"
  else
    python3 - "$1" <<'PY'
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=15).read().decode())
PY
  fi
}

pidfile() { echo "$RUN/$1.pid"; }
logfile() { echo "$RUN/$1.log"; }

# pid of a running service this script started, or nothing.
# Guards against pid reuse: the command line must carry our marker.
running_pid() {
  local f pid
  f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || { rm -f "$f"; return 1; }
  local cmdline=""
  kill -0 "$pid" 2>/dev/null && cmdline="$(cmdline_of "$pid")"
  if [[ "$cmdline" == *"-Daitrail.local.service=$1 "* ]]; then
    echo "$pid"
    return 0
  fi
  rm -f "$f"   # stale
  return 1
}

cmdline_of() { # pid -> its command line, arguments separated by spaces (with a trailing space)
  if [[ -r "/proc/$1/cmdline" ]]; then tr '\0' ' ' <"/proc/$1/cmdline"
  else printf '%s \n' "$(ps -o args= -p "$1" 2>/dev/null)"; fi
}

rss_mb() { # pid -> resident memory
  local kb
  kb="$(ps -o rss= -p "$1" 2>/dev/null | tr -d ' ')"
  if [[ "$kb" =~ ^[0-9]+$ ]]; then echo "$(( kb / 1024 )) MB"; else echo "?"; fi
}

# start_detached NAME CMD... : runs CMD in its own session, stdout+stderr to the log,
# and records the pid of CMD itself (the exec'd java), not of a wrapper.
start_detached() {
  local name="$1"; shift
  local log pf
  log="$(logfile "$name")"; pf="$(pidfile "$name")"
  rm -f "$pf"
  # keep one previous log once it passes 20 MB
  if [[ -f "$log" ]] && (( $(wc -c <"$log") > 20 * 1024 * 1024 )); then mv -f "$log" "$log.1"; fi
  {
    echo "===== $(date -u +%FT%TZ) services.sh starting $name"
    printf '%q ' "$@"; echo
  } >>"$log"
  # Own session (no SIGHUP/SIGINT from the caller's terminal); the inner bash writes its
  # own pid and then becomes java through exec. 9>&- : the lock on fd 9 is not inherited.
  local detach=(nohup)
  command -v setsid >/dev/null 2>&1 && detach=(setsid)
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner bash
  "${detach[@]}" bash -c 'echo $$ > "$0"; exec "$@"' "$pf" "$@" >>"$log" 2>&1 </dev/null 9>&- &
  local i
  for i in $(seq 50); do [[ -s "$pf" ]] && break; sleep 0.1; done
  [[ -s "$pf" ]] || die "$name did not start (no pid file); see $log"
}

fail_start() { # name message
  local name="$1" msg="$2" log
  log="$(logfile "$name")"
  printf '%s\n' "services: ERROR: $name: $msg" >&2
  printf '%s\n' "----- last 40 lines of $log -----" >&2
  tail -n 40 "$log" >&2 || true
  printf '%s\n' "-----" >&2
  stop_service "$name" quiet || true
  exit 1
}

# ----------------------------------------------------------------------------- kafka
fetch_kafka() {
  local stamp want
  stamp="$KAFKA_HOME/.fetched"
  want="$KAFKA_VERSION $(sha "$HERE/kafka/pom.xml")"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  say "kafka: fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION and dependencies from Maven Central"
  mvn_copy "$HERE/kafka/pom.xml" "$KAFKA_HOME" kafka.version "$KAFKA_VERSION"
  rm -rf "$KAFKA_HOME"
  mv "$KAFKA_HOME.tmp" "$KAFKA_HOME"
  echo "$want" >"$stamp"
  say "kafka: $(find "$KAFKA_HOME/lib" -name "*.jar" | wc -l) jars in $KAFKA_HOME/lib"
}

kafka_config() {
  local dir="$DATA/kafka"
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<EOF
# Generated by deploy/local/services.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
auto.create.topics.enable=true
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=168
EOF
  cat >"$dir/log4j2.properties" <<'EOF'
# Generated by deploy/local/services.sh: everything to stdout (-> .run/kafka.log).
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.netty.name = io.netty
logger.netty.level = WARN
EOF
}

kafka_java() { # main class and args
  "$JAVA" -Xms256m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DATA/kafka/log4j2.properties" \
    -cp "$KAFKA_HOME/lib/*" "$@"
}

kafka_format_if_needed() {
  local dir="$DATA/kafka"
  if [[ -f "$dir/data/meta.properties" ]]; then return 0; fi
  if [[ ! -s "$dir/cluster.id" ]]; then
    kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 | tr -d '[:space:]' >"$dir/cluster.id"
    [[ -s "$dir/cluster.id" ]] || die "kafka: StorageTool random-uuid gave no cluster id"
  fi
  say "kafka: formatting $dir/data (cluster id $(cat "$dir/cluster.id"))"
  if ! kafka_java kafka.tools.StorageTool format -t "$(cat "$dir/cluster.id")" -c "$dir/server.properties" \
       >>"$(logfile kafka)" 2>&1; then
    tail -n 20 "$(logfile kafka)" >&2
    die "kafka: storage format failed"
  fi
}

kafka_healthy() {
  port_open "$KAFKA_PORT" || return 1
  local py
  if py="$(python_with_aiokafka)"; then
    "$py" "$HERE/probe.py" kafka-ready --timeout 5 >/dev/null 2>&1
  else
    return 0   # no aiokafka around: the open port has to do
  fi
}

start_kafka() {
  fetch_kafka
  kafka_config
  kafka_format_if_needed
  start_detached kafka \
    "$JAVA" -Daitrail.local.service=kafka -Xms256m -Xmx"$KAFKA_HEAP" \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true -Djava.io.tmpdir="$DATA/kafka" \
    -Dlog4j2.configurationFile="$DATA/kafka/log4j2.properties" \
    -cp "$KAFKA_HOME/lib/*" kafka.Kafka "$DATA/kafka/server.properties"
}

# ----------------------------------------------------------------------------- opensearch
fetch_opensearch() {
  local stamp want
  stamp="$OPENSEARCH_HOME/.fetched"
  want="$OPENSEARCH_VERSION $(sha "$HERE/opensearch/pom.xml")"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    say "opensearch: fetching org.opensearch:opensearch:$OPENSEARCH_VERSION + module jars from Maven Central"
    mvn_copy "$HERE/opensearch/pom.xml" "$OPENSEARCH_HOME" opensearch.version "$OPENSEARCH_VERSION"
    rm -rf "$OPENSEARCH_HOME"
    mv "$OPENSEARCH_HOME.tmp" "$OPENSEARCH_HOME"
    echo "$want" >"$stamp"
    say "opensearch: $(find "$OPENSEARCH_HOME/lib" -name "*.jar" | wc -l) jars in $OPENSEARCH_HOME/lib"
  fi
  # the launcher, compiled against exactly these jars
  local src="$HERE/opensearch/LocalOpenSearch.java" cstamp="$OPENSEARCH_HOME/classes/.source"
  local javac
  if [[ ! -f "$cstamp" || "$(cat "$cstamp")" != "$(sha "$src") $JAVA" ]]; then
    javac="$(dirname "$JAVA")/javac"
    [[ -x "$javac" ]] || die "no javac next to $JAVA: a JDK (not a JRE) is needed to compile the launcher"
    say "opensearch: compiling LocalOpenSearch.java"
    rm -rf "$OPENSEARCH_HOME/classes"
    mkdir -p "$OPENSEARCH_HOME/classes"
    "$javac" -nowarn -d "$OPENSEARCH_HOME/classes" -cp "$OPENSEARCH_HOME/lib/*" "$src" \
      || die "opensearch: compiling the launcher failed"
    echo "$(sha "$src") $JAVA" >"$cstamp"
  fi
}

opensearch_config() {
  local home="$DATA/opensearch"
  mkdir -p "$home/config" "$home/data" "$home/logs" "$home/tmp" "$home/plugins" "$home/modules"
  cat >"$home/config/opensearch.yml" <<EOF
# Generated by deploy/local/services.sh on every start; edits are overwritten.
cluster.name: aitrail-local
node.name: aitrail-local
path.data: $home/data
path.logs: $home/logs
network.host: 127.0.0.1
http.port: $OPENSEARCH_PORT
transport.port: $OPENSEARCH_TRANSPORT_PORT
discovery.type: single-node
# a development node: do not turn indices read-only when the disk fills up
cluster.routing.allocation.disk.threshold_enabled: false
EOF
  cat >"$home/config/log4j2.properties" <<'EOF'
# Generated by deploy/local/services.sh: everything to stdout (-> .run/opensearch.log).
status = error
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name]%marker %m%n
rootLogger.level = info
rootLogger.appenderRef.console.ref = console
# deprecation warnings go back to clients as HTTP Warning headers, as in the distribution
appender.header_warning.type = HeaderWarningAppender
appender.header_warning.name = header_warning
logger.deprecation.name = org.opensearch.deprecation
# DeprecationLogger logs at a custom level just below WARN: "info" lets it through
logger.deprecation.level = info
logger.deprecation.appenderRef.header_warning.ref = header_warning
logger.deprecation.additivity = false
EOF
}

opensearch_healthy() {
  local body
  body="$(http_get "http://127.0.0.1:$OPENSEARCH_PORT/_cluster/health?wait_for_status=yellow&timeout=5s" 2>/dev/null)" || return 1
  [[ "$body" == *'"timed_out":false'* && "$body" != *'"status":"red"'* ]]
}

start_opensearch() {
  fetch_opensearch
  opensearch_config
  local home="$DATA/opensearch" locale="SPI,COMPAT"
  (( JAVA_MAJOR >= 23 )) && locale="SPI,CLDR"   # COMPAT is gone from Java 23
  (( JAVA_MAJOR >= 22 )) && warn "opensearch $OPENSEARCH_VERSION is tested on Java 17/21; $JAVA is Java $JAVA_MAJOR"
  start_detached opensearch \
    "$JAVA" -Daitrail.local.service=opensearch -Xms"$OPENSEARCH_HEAP" -Xmx"$OPENSEARCH_HEAP" \
    -XX:+UseG1GC -XX:G1ReservePercent=25 -XX:InitiatingHeapOccupancyPercent=30 -XX:+ExitOnOutOfMemoryError \
    -Xss1m -Djava.awt.headless=true -Dfile.encoding=UTF-8 -Djna.nosys=true -XX:-OmitStackTraceInFastThrow \
    -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true -Dio.netty.recycler.maxCapacityPerThread=0 \
    -Dio.netty.allocator.numDirectArenas=0 -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true \
    -Dlog4j2.formatMsgNoLookups=true -Djava.locale.providers="$locale" \
    -Djava.io.tmpdir="$home/tmp" -XX:ErrorFile="$home/logs/hs_err_pid%p.log" \
    -cp "$OPENSEARCH_HOME/lib/*:$OPENSEARCH_HOME/classes" LocalOpenSearch "$home"
}

# ----------------------------------------------------------------------------- generic
port_of() { case "$1" in kafka) echo "$KAFKA_PORT";; opensearch) echo "$OPENSEARCH_PORT";; esac; }
healthy() { "${1}_healthy"; }

wait_healthy() { # name
  local name="$1" pid deadline
  deadline=$(( SECONDS + START_TIMEOUT ))
  while (( SECONDS < deadline )); do
    pid="$(running_pid "$name")" || fail_start "$name" "the process exited while starting"
    if healthy "$name"; then
      say "$name: healthy (pid $pid, $(rss_mb "$pid"), $(( SECONDS - ${START_AT:-0} ))s)"
      return 0
    fi
    sleep 1
  done
  fail_start "$name" "not healthy after ${START_TIMEOUT}s (AITRAIL_SERVICES_TIMEOUT); stopped it"
}

up_one() {
  local name="$1" pid port
  if pid="$(running_pid "$name")"; then
    if healthy "$name"; then
      say "$name: already running and healthy (pid $pid)"
      return 0
    fi
    say "$name: running (pid $pid) but not healthy yet, waiting"
    START_AT=$SECONDS wait_healthy "$name"
    return 0
  fi
  port="$(port_of "$name")"
  if port_open "$port"; then
    die "$name: 127.0.0.1:$port is already taken by a process this script did not start; stop it first"
  fi
  if [[ "$name" == kafka ]] && port_open "$KAFKA_CONTROLLER_PORT"; then
    die "kafka: 127.0.0.1:$KAFKA_CONTROLLER_PORT (controller) is already taken by another process"
  fi
  START_AT=$SECONDS
  "start_$name"
  say "$name: started (pid $(cat "$(pidfile "$name")")), log $(logfile "$name"); waiting up to ${START_TIMEOUT}s"
  wait_healthy "$name"
}

# stop_service NAME [quiet] : SIGTERM, wait STOP_TIMEOUT, SIGKILL; only our own pid.
stop_service() {
  local name="$1" quiet="${2:-}" pid i
  if ! pid="$(running_pid "$name")"; then
    [[ -n "$quiet" ]] || say "$name: not running"
    rm -f "$(pidfile "$name")"
    return 0
  fi
  [[ -n "$quiet" ]] || say "$name: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for (( i = 0; i < STOP_TIMEOUT * 10; i++ )); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "$name: still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for (( i = 0; i < 100; i++ )); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$(pidfile "$name")"
  [[ -n "$quiet" ]] || say "$name: stopped"
}

status_one() {
  local name="$1" pid
  if pid="$(running_pid "$name")"; then
    if healthy "$name"; then
      say "$name: running, healthy   pid $pid  rss $(rss_mb "$pid")  127.0.0.1:$(port_of "$name")"
      return 0
    fi
    say "$name: running, NOT healthy  pid $pid  rss $(rss_mb "$pid")  log $(logfile "$name")"
    return 1
  fi
  say "$name: stopped"
  return 1
}

smoke_one() {
  local py
  case "$1" in
    kafka)
      py="$(python_with_aiokafka)" || die "smoke kafka needs a python with aiokafka (the project's .venv)"
      "$py" "$HERE/probe.py" kafka-smoke ;;
    opensearch)
      python3 "$HERE/probe.py" opensearch-smoke ;;
  esac
}

# ----------------------------------------------------------------------------- main
cmd="${1:-}"
[[ -n "$cmd" ]] || usage 2
shift || true
case "$cmd" in -h|--help|help) usage 0;; esac

services=()
if (( $# == 0 )); then
  services=("${ALL_SERVICES[@]}")
else
  for s in "$@"; do
    case "$s" in
      kafka|opensearch) services+=("$s");;
      *) die "unknown service '$s' (kafka, opensearch)";;
    esac
  done
fi

mkdir -p "$RUN" "$DATA" "$CACHE"
# one services.sh at a time per data folder
if command -v flock >/dev/null 2>&1 && [[ "$cmd" != status && "$cmd" != logs ]]; then
  exec 9>"$RUN/.lock"
  flock -w 600 9 || die "another services.sh is running on $RUN (lock $RUN/.lock)"
fi

case "$cmd" in
  up)
    pick_java
    for s in "${services[@]}"; do up_one "$s"; done
    ;;
  down|stop)
    for s in "${services[@]}"; do stop_service "$s"; done
    ;;
  status)
    rc=0
    for s in "${services[@]}"; do status_one "$s" || rc=1; done
    exit "$rc"
    ;;
  logs)
    for s in "${services[@]}"; do
      echo "===== $(logfile "$s")"; tail -n "${LINES_TO_SHOW:-40}" "$(logfile "$s")" 2>/dev/null || echo "(no log)"
    done
    ;;
  smoke)
    for s in "${services[@]}"; do
      status_one "$s" >/dev/null || die "$s is not running and healthy: run '$0 up $s' first"
      smoke_one "$s"
    done
    ;;
  fetch)
    pick_java
    for s in "${services[@]}"; do "fetch_$s"; done
    say "artefacts in $CACHE"
    ;;
  reset)
    for s in "${services[@]}"; do
      if running_pid "$s" >/dev/null; then stop_service "$s"; fi
      rm -rf "${DATA:?}/$s"
      say "$s: data deleted ($DATA/$s)"
    done
    ;;
  *)
    usage 2
    ;;
esac
