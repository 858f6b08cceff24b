#!/usr/bin/env bash
# Local development/test stack for scheduled-jobs, without Docker:
#   kafka     Apache Kafka (KRaft, one node, broker+controller in one JVM; `up --brokers 3`: three
#             such nodes kafka-1..kafka-3 as one cluster), from Maven Central
#   registry  Apicurio Registry 3.x (Confluent-compatible API at /apis/ccompat/v7)
#   redis     Debian's redis-server (AOF on, so restarts keep data)
#   postgres  Debian's PostgreSQL (role/database scheduled_jobs, password scheduled_jobs)
#
# Usage: scripts/services.sh up [--brokers N] | down | status | env
#                            start|stop|restart <kafka|kafka-I|registry|redis|postgres>
#                            logs <service> [-f]
#                            kafka-scram-user <name> <password>   (SCRAM-SHA-256/512 user for the SASL listeners)
#                            kafka-produce <topic> <registry-url|-> [bootstrap]   (Kafka's Java client
#                                writes stdin's records compressed, Avro-encoded with a registry; tests)
#
# Everything (data, logs, pid files, downloads that are not in ~/.m2) lives in
# ${SJ_LOCAL_DIR:-<repo>/.local}. Every service listens on 127.0.0.1 only.
# Ports: SJ_KAFKA_PORT (9092), SJ_KAFKA_CONTROLLER_PORT (9093), SJ_KAFKA_SASL_PORT (9094:
#        SASL_PLAINTEXT with SCRAM-SHA-256, users made with kafka-scram-user), SJ_KAFKA_SSL_PORT (9095:
#        SSL), SJ_KAFKA_SASL_SSL_PORT (9096: SASL_SSL with SCRAM-SHA-256 and SCRAM-SHA-512),
#        SJ_REGISTRY_PORT (8081), SJ_REGISTRY_MANAGEMENT_PORT (registry port + 10000),
#        SJ_REDIS_PORT (6379), SJ_REDIS_TLS_PORT (6380: TLS), SJ_PG_PORT (5432: TLS offered too).
# TLS: a private CA and a server certificate for 127.0.0.1/localhost are generated on first
#   start into <local dir>/tls (clients trust tls/ca.crt); see the "tls" section below.
# Other knobs: SJ_KAFKA_VERSION (4.1.1), SJ_REGISTRY_VERSION (3.3.3, falls back to 3.0.9),
#   SJ_REGISTRY_STORAGE (file|mem, default file), SJ_KAFKA_HEAP (1g), SJ_REGISTRY_HEAP (512m),
#   SJ_START_TIMEOUT (seconds, per service), SJ_STOP_TIMEOUT (30: SIGKILL after this),
#   SJ_KAFKA_BROKERS (1; 3..9 runs a KRaft cluster kafka-1..kafka-N, like `up --brokers N`,
#   node i on the Kafka ports + 10*(i-1), heap 512m each; see "kafka cluster" below).
# `env` prints the SJ_* exports that point scheduled-jobs at this stack (eval "$(... env)").
#
# The script installs whatever is missing (apt packages, Maven artifacts) on first use, so a
# fresh machine only needs `scripts/services.sh up`. Services run detached (own session) and
# outlive the script; state is tracked through pid files, never through process names.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT_DIR=$(cd "$SCRIPT_DIR/.." && pwd -P)
# realpath -m: allow a relative SJ_LOCAL_DIR and a folder that does not exist yet.
LOCAL_DIR=$(realpath -m "${SJ_LOCAL_DIR:-$ROOT_DIR/.local}")

KAFKA_PORT=${SJ_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${SJ_KAFKA_CONTROLLER_PORT:-9093}
KAFKA_SASL_PORT=${SJ_KAFKA_SASL_PORT:-9094}
KAFKA_SSL_PORT=${SJ_KAFKA_SSL_PORT:-9095}
KAFKA_SASL_SSL_PORT=${SJ_KAFKA_SASL_SSL_PORT:-9096}
REGISTRY_PORT=${SJ_REGISTRY_PORT:-8081}
# Quarkus management interface (health/metrics) of the registry; by default it would be 0.0.0.0:9000.
REGISTRY_MANAGEMENT_PORT=${SJ_REGISTRY_MANAGEMENT_PORT:-$((REGISTRY_PORT + 10000))}
REDIS_PORT=${SJ_REDIS_PORT:-6379}
REDIS_TLS_PORT=${SJ_REDIS_TLS_PORT:-6380}
PG_PORT=${SJ_PG_PORT:-5432}

KAFKA_VERSION=${SJ_KAFKA_VERSION:-4.1.1}
REGISTRY_VERSION=${SJ_REGISTRY_VERSION:-3.3.3}
REGISTRY_FALLBACK_VERSION=3.0.9
REGISTRY_STORAGE=${SJ_REGISTRY_STORAGE:-file}
KAFKA_HEAP=${SJ_KAFKA_HEAP:-1g}
REGISTRY_HEAP=${SJ_REGISTRY_HEAP:-512m}
STOP_TIMEOUT=${SJ_STOP_TIMEOUT:-30}

PG_APP_USER=scheduled_jobs
PG_APP_PASSWORD=scheduled_jobs
PG_APP_DB=scheduled_jobs

SERVICES=(kafka registry redis postgres)

KAFKA_DIR=$LOCAL_DIR/kafka
REGISTRY_DIR=$LOCAL_DIR/registry
REDIS_DIR=$LOCAL_DIR/redis
TLS_DIR=$LOCAL_DIR/tls
PG_DIR=$LOCAL_DIR/postgres
# Where postgres_start moved the data when the postgres OS user cannot reach $LOCAL_DIR.
PG_POINTER=$LOCAL_DIR/postgres.location
# Re-read after a start: postgres_start may move the data (in a subshell) and record it.
pg_resolve() {
  [[ -f $PG_POINTER ]] && PG_DIR=$(<"$PG_POINTER")
  PG_DATA=$PG_DIR/data
}
pg_resolve

# ---------------------------------------------------------------------------------------------
# generic helpers
# ---------------------------------------------------------------------------------------------

say() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

usage() { # [exit-code]; 0 prints to stdout (help), anything else to stderr
  local rc=${1:-2}
  [[ $rc -eq 0 ]] || exec 1>&2
  cat <<EOF
usage: ${0##*/} up [--brokers N] | down | status | env
       ${0##*/} start|stop|restart <kafka|kafka-I|registry|redis|postgres>
       ${0##*/} logs <kafka|kafka-I|registry|redis|postgres> [-f]
       ${0##*/} kafka-scram-user <name> <password>
       ${0##*/} kafka-produce <topic> <registry-url|-> [bootstrap]
           (stdin, per record: <codec> <base64 key> <base64 value>, the value Avro JSON with a registry)
up --brokers 3 (or SJ_KAFKA_BROKERS=3): a three-node KRaft cluster, nodes kafka-1..kafka-3
(remembered; --brokers 1 goes back to the single broker). env: exports that point the tool here.
data and logs: $LOCAL_DIR (override with SJ_LOCAL_DIR)
EOF
  exit "$rc"
}

is_service() {
  local s
  for s in "${SERVICES[@]}"; do [[ $1 == "$s" ]] && return 0; done
  return 1
}

now() { date +%s; }

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# A pid file can outlive its process and the pid can be reused, so a pid only counts if the
# process command line still carries the expected marker.
pid_matches() { # pid marker
  pid_alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

pid_from_file() { # pidfile marker -> prints the pid if that process is alive and ours
  local p
  p=$(head -n1 "$1" 2>/dev/null || true)
  if pid_matches "$p" "$2"; then echo "$p"; fi
}

port_in_use() { # port -> 0 if something accepts TCP connections on 127.0.0.1:port
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Keep the previous run's log next to the new one: after a crash + restart the interesting part
# is usually in the old file.
rotate_log() { [[ -s $1 ]] && mv -f "$1" "$1.1"; return 0; }

# Starts "$@" in a new session (survives the script, the caller's terminal and its signals),
# stdin from /dev/null, stdout+stderr appended to $2. The child writes its own pid before exec:
# $! is unreliable because setsid forks when the caller is a process-group leader.
# fd 9 (our flock) is closed so the daemon does not hold the lock forever.
spawn() { # pidfile logfile cmd...
  local pidfile=$1 logfile=$2
  shift 2
  rm -f "$pidfile"
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 9>&- &
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s $pidfile ]] && return 0
    sleep 0.1
  done
  die "could not launch $3 (no pid file $pidfile); see $logfile"
}

# ---------------------------------------------------------------------------------------------
# installation helpers (only reached when a service actually has to start)
# ---------------------------------------------------------------------------------------------

as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "need root (or passwordless sudo) for: $*"
  fi
}

# Package lists on a fresh machine are empty or stale; refresh them unless that happened in the
# last hour (a file stamp rather than a variable: services start in subshells).
apt_update() {
  if [[ -n $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -60 2>/dev/null | head -n1) ]]; then
    return 0
  fi
  mkdir -p "$LOCAL_DIR"
  as_root apt-get -o DPkg::Lock::Timeout=300 update >>"$LOCAL_DIR/apt.log" 2>&1 9>&- ||
    die "apt-get update failed; see $LOCAL_DIR/apt.log"
}

apt_install() { # packages...
  say "installing apt packages: $*"
  apt_update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
    --no-install-recommends "$@" >>"$LOCAL_DIR/apt.log" 2>&1 9>&- ||
    die "apt-get install $* failed; see $LOCAL_DIR/apt.log"
}

ensure_cmd() { # command apt-package
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
  command -v "$1" >/dev/null 2>&1 || die "$1 still missing after installing $2"
}

java_major() { # java-binary -> major version (e.g. 17), from the JDK's release file if any
  local home
  home=$(dirname "$(dirname "$(readlink -f "$1")")")
  if [[ -f $home/release ]]; then
    sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$home/release"
  else
    # e.g. openjdk version "17.0.15" 2025-04-15
    "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1
  fi
}

# Prints a java binary of at least the given major version: SJ_JAVA_HOME, JAVA_HOME, PATH, then
# every JDK under /usr/lib/jvm (Debian's default is 17, some images add a newer Temurin there).
find_java() { # min-major
  local cand v
  for cand in ${SJ_JAVA_HOME:+"$SJ_JAVA_HOME/bin/java"} ${JAVA_HOME:+"$JAVA_HOME/bin/java"} \
    "$(command -v java 2>/dev/null || true)" /usr/lib/jvm/*/bin/java; do
    [[ -n $cand && -x $cand ]] || continue
    v=$(java_major "$cand")
    if [[ ${v:-0} -ge $1 ]]; then echo "$cand"; return 0; fi
  done
  return 1
}

# Like find_java, but installs Debian's OpenJDK of that version when none is there (returns 1
# when Debian does not package it, e.g. 21 on bookworm).
ensure_java() { # min-major
  find_java "$1" && return 0
  local pkg=openjdk-$(($1 < 17 ? 17 : $1))-jre-headless candidate
  apt_update
  # `apt-cache show` succeeds for names that are merely referenced; only a Candidate installs.
  candidate=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
  [[ -n $candidate && $candidate != "(none)" ]] || return 1
  apt_install "$pkg"
  find_java "$1"
}

ensure_maven() { ensure_java 17 >/dev/null || die "no Java 17+ for Maven"; ensure_cmd mvn maven; }

mvn_quiet() { # logfile mvn-args... ; Maven output goes to the log, not the terminal
  local logfile=$1
  shift
  mvn -B -ntp "$@" >"$logfile" 2>&1 9>&-
}

# ---------------------------------------------------------------------------------------------
# tls: one private CA and one server certificate for every TLS listener of the stack
# ---------------------------------------------------------------------------------------------
# Kafka's SSL and SASL_SSL listeners, Redis' TLS port and PostgreSQL (ssl = on) all present
# $TLS_DIR/server.crt, issued for localhost and 127.0.0.1 by $TLS_DIR/ca.crt. Clients verify
# the server against ca.crt (tests find it through SJ_LOCAL_DIR: <local dir>/tls/ca.crt), which
# also exercises hostname verification, as a production client does. Nothing here is a
# secret worth protecting: the CA key only signs certificates for the loopback addresses.

# Makes the CA and the server certificate unless both exist and stay valid for another day.
# Runs under the services lock (start paths only); a fresh set is made in a folder beside the
# old files and moved in only when openssl made all of it.
tls_ensure() {
  ensure_cmd openssl openssl
  mkdir -p "$TLS_DIR"
  local f ok=1
  for f in ca.crt ca.key server.crt server.key server.pem; do [[ -s $TLS_DIR/$f ]] || ok=0; done
  if [[ $ok -eq 1 ]] && openssl x509 -checkend 86400 -noout -in "$TLS_DIR/ca.crt" >/dev/null 2>&1 &&
    openssl x509 -checkend 86400 -noout -in "$TLS_DIR/server.crt" >/dev/null 2>&1; then
    return 0
  fi
  say "tls: generating a local CA and a server certificate for localhost/127.0.0.1 in $TLS_DIR"
  local tmp
  tmp=$(mktemp -d "$TLS_DIR/.new.XXXXXX")
  {
    openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=scheduled-jobs local CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$tmp/ca.key" -out "$tmp/ca.crt" &&
      openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
        -keyout "$tmp/server.key" -out "$tmp/server.csr" &&
      printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$tmp/server.ext" &&
      openssl x509 -req -sha256 -days 825 -in "$tmp/server.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" \
        -CAcreateserial -extfile "$tmp/server.ext" -out "$tmp/server.crt"
  } >"$tmp/openssl.log" 2>&1 || { cat "$tmp/openssl.log" >&2; rm -rf "$tmp"; die "tls: openssl could not make the certificates"; }
  # Kafka reads a PEM "keystore" (ssl.keystore.type=PEM): the unencrypted PKCS#8 key (what
  # OpenSSL 3 writes) followed by the certificate chain. No keytool, no JKS/PKCS12 password.
  cat "$tmp/server.key" "$tmp/server.crt" "$tmp/ca.crt" >"$tmp/server.pem"
  chmod 600 "$tmp/ca.key" "$tmp/server.key" "$tmp/server.pem"
  for f in ca.key ca.crt server.key server.crt server.pem; do mv -f "$tmp/$f" "$TLS_DIR/$f"; done
  rm -rf "$tmp"
}

# The broker's TLS client listeners (one broker; the SASL ones share the SCRAM users).
kafka_tls_listeners() { echo "SSL://127.0.0.1:$KAFKA_SSL_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT"; }

kafka_tls_properties() {
  cat <<EOF

# TLS (scripts/services.sh tls_ensure): SSL on $KAFKA_SSL_PORT, SASL_SSL with SCRAM-SHA-256/512
# on $KAFKA_SASL_SSL_PORT; clients trust $TLS_DIR/ca.crt. No client certificates.
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/server.pem
ssl.client.auth=none
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
}

# A second, TLS-only port on the same server (same data); clients need no certificate.
redis_tls_config() {
  cat <<EOF
# TLS on a second port (scripts/services.sh tls_ensure); clients trust $TLS_DIR/ca.crt.
tls-port $REDIS_TLS_PORT
tls-cert-file "$TLS_DIR/server.crt"
tls-key-file "$TLS_DIR/server.key"
tls-ca-cert-file "$TLS_DIR/ca.crt"
tls-auth-clients no
EOF
}

# PostgreSQL offers TLS on its one port (sslmode=prefer clients take it, require/verify-full
# demand it). The server wants its key owned by itself and private, inside its data folder,
# which the postgres OS user can always read (unlike, possibly, $TLS_DIR).
postgres_tls_config() {
  tls_ensure
  local f
  for f in server.crt server.key; do
    if [[ $EUID -eq 0 ]]; then
      install -m 600 -o postgres -g postgres "$TLS_DIR/$f" "$PG_DATA/sj-$f"
    else
      install -m 600 "$TLS_DIR/$f" "$PG_DATA/sj-$f"
    fi
  done
  as_pg tee -a "$PG_DATA/sj-local.conf" >/dev/null <<EOF
# TLS (scripts/services.sh tls_ensure): clients verify against $TLS_DIR/ca.crt.
ssl = on
ssl_cert_file = 'sj-server.crt'
ssl_key_file = 'sj-server.key'
EOF
}

# ---------------------------------------------------------------------------------------------
# kafka
# ---------------------------------------------------------------------------------------------

# The -Dsj.service marker of the JVM kafka_start launches (kafka-N for a cluster node).
KAFKA_SERVICE=kafka
kafka_log() { echo "$KAFKA_DIR/kafka.log"; }
kafka_pid() { pid_from_file "$KAFKA_DIR/kafka.pid" "-Dsj.service=kafka"; }
kafka_ports() { echo "$KAFKA_PORT,$KAFKA_CONTROLLER_PORT,$KAFKA_SASL_PORT,$KAFKA_SSL_PORT,$KAFKA_SASL_SSL_PORT"; }
kafka_healthy() { python3 "$SCRIPT_DIR/kafka/probe.py" 127.0.0.1 "$KAFKA_PORT" 2 2>/dev/null; }

# Resolving through Maven takes ~10 s even with a warm ~/.m2, so a classpath is cached and only
# recomputed when the POM or version changes or a jar vanished from the local repository.
maven_classpath() { # pom cp-file(.txt; its key in .key) maven-log what
  local pom=$1 cp_file=$2 log=$3 what=$4 key jar ok=1 key_file=${2%.txt}.key
  key="$KAFKA_VERSION $(sha256sum "$pom" | cut -d' ' -f1)"
  if [[ -s $cp_file && $(cat "$key_file" 2>/dev/null) == "$key" ]]; then
    local -a jars
    # Maven writes no final newline, so read reports EOF (status 1) after filling the array.
    IFS=: read -r -a jars <"$cp_file" || true
    for jar in "${jars[@]}"; do [[ -f $jar ]] || { ok=0; break; }; done
    [[ $ok -eq 1 ]] && return 0
  fi
  ensure_maven
  say "resolving $what from Maven Central (first run only)"
  mvn_quiet "$log" -f "$pom" dependency:build-classpath \
    -Dkafka.version="$KAFKA_VERSION" -Dmdep.includeScope=runtime -Dmdep.outputFile="$cp_file.tmp" ||
    die "maven could not resolve the classpath of $what; see $log"
  mv -f "$cp_file.tmp" "$cp_file"
  echo "$key" >"$key_file"
}

kafka_classpath() {
  maven_classpath "$SCRIPT_DIR/kafka/pom.xml" "$KAFKA_DIR/classpath.txt" "$KAFKA_DIR/maven.log" "kafka_2.13:$KAFKA_VERSION"
}

kafka_write_config() {
  # Regenerated on every start so port/env changes apply; the cluster id lives in the formatted
  # storage (meta.properties), not here.
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Generated by scripts/services.sh - edits are overwritten on the next start.
process.roles=broker,controller
node.id=1
# Static quorum (no --standalone at format time; Kafka 4.1 rejects mixing both styles).
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT,$(kafka_tls_listeners)
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT,$(kafka_tls_listeners)
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
# A second client listener with SCRAM authentication, as production brokers have (the tool's
# SASL pass-through is tested against it); users: scripts/services.sh kafka-scram-user NAME PASSWORD.
sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$KAFKA_DIR/data

# One node: every internal topic must be satisfiable with a single replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
num.partitions=1
EOF
  kafka_common_config >>"$KAFKA_DIR/server.properties"
  # TLS listeners: the single broker only (a cluster node would need its own TLS ports).
  kafka_tls_properties >>"$KAFKA_DIR/server.properties"
}

# The part of server.properties every node shares, single broker or cluster.
kafka_common_config() {
  cat <<EOF

# Tests create their topics explicitly; auto-creation would hide typos.
auto.create.topics.enable=false
# No 3 s wait for more members before the first rebalance.
group.initial.rebalance.delay.ms=0

# The processor's transaction timeout is 10 s by default (processor.transaction_timeout_ms); tests
# raise it up to minutes, and the broker rejects InitProducerId beyond transaction.max.timeout.ms
# (default 15 min), so allow up to 1 h. The abort scan interval stays at its 10 s default, as on
# a production broker: a timed-out transaction is aborted within ~10 s of its deadline.
transaction.max.timeout.ms=3600000
transaction.abort.timed.out.transaction.cleanup.interval.ms=10000

# Keep the JVM small: the log cleaner's dedupe buffer defaults to 128 MB of heap.
log.cleaner.dedupe.buffer.size=33554432
num.network.threads=3
num.io.threads=4
EOF
}

kafka_new_cluster_id() {
  python3 -c '
import base64, uuid
while True:  # same rule as Kafka Uuid.randomUuid(): never start with "-"
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s); break'
}

kafka_start() {
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  local java cp
  java=$(ensure_java 17) || die "kafka: needs Java 17+ and none could be installed"
  ensure_cmd python3 python3
  kafka_classpath
  tls_ensure
  if [[ $KAFKA_SERVICE == kafka ]]; then kafka_write_config; else kafka_node_write_config; fi
  cp=$(cat "$KAFKA_DIR/classpath.txt")
  if [[ ! -f $KAFKA_DIR/data/meta.properties ]]; then
    [[ -s $KAFKA_DIR/cluster.id ]] || kafka_new_cluster_id >"$KAFKA_DIR/cluster.id"
    say "kafka: formatting storage (cluster id $(cat "$KAFKA_DIR/cluster.id"))"
    "$java" -cp "$cp" -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/log4j2.yaml" kafka.tools.StorageTool \
      format -t "$(cat "$KAFKA_DIR/cluster.id")" -c "$KAFKA_DIR/server.properties" --ignore-formatted \
      >"$KAFKA_DIR/format.log" 2>&1 9>&- ||
      die "kafka: storage format failed; see $KAFKA_DIR/format.log"
  fi
  rotate_log "$(kafka_log)"
  # log4j2.shutdownHookEnabled=false: log4j's own shutdown hook would otherwise stop logging
  # halfway through Kafka's (SIGTERM) shutdown, hiding whether it completed cleanly.
  (
    cd "$KAFKA_DIR"
    spawn "$KAFKA_DIR/kafka.pid" "$(kafka_log)" "$java" -Dsj.service="$KAFKA_SERVICE" \
      -Xms256m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
      -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/log4j2.yaml" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
      -Dlog4j2.shutdownHookEnabled=false \
      -cp "$cp" kafka.Kafka "$KAFKA_DIR/server.properties"
  )
}

# ---------------------------------------------------------------------------------------------
# kafka cluster: `up --brokers N` or SJ_KAFKA_BROKERS=N (N >= 3) runs N combined
# broker+controller nodes kafka-1..kafka-N in place of the single `kafka`, with replication 3
# and min.insync.replicas=2 for the internal topics and as the broker defaults, as production
# has. Node i listens on the single node's ports + 10*(i-1) (9092/9093/9094, 9102/9103/9104,
# ...) and keeps data, log, pid and config under $LOCAL_DIR/kafka-i. The count is remembered in
# $LOCAL_DIR/kafka.brokers, so status/start/stop/logs need not repeat it; `up --brokers 1`
# switches back (the other layout's data stays on disk).
# ---------------------------------------------------------------------------------------------

KAFKA_BROKERS_FILE=$LOCAL_DIR/kafka.brokers
KAFKA_PORT_STRIDE=10
KAFKA_BROKERS=1
# The single node's ports: a node's own are computed from them.
KAFKA_BASE_PORTS=("$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_PORT")

# Decides single broker or cluster: the `--brokers` argument, else SJ_KAFKA_BROKERS, else what
# the last `up` recorded, else 1. A cluster replaces `kafka` in SERVICES by its nodes.
cluster_select() { # [count] [record]
  local n=${1:-${SJ_KAFKA_BROKERS:-}} given=1 i
  if [[ -z $n ]]; then
    given=
    n=$(cat "$KAFKA_BROKERS_FILE" 2>/dev/null || echo 1)
  fi
  [[ $n =~ ^[0-9]+$ ]] && ((n == 1 || (n >= 3 && n <= 9))) ||
    die "broker count must be 1 or 3..9 (a KRaft quorum of 2 survives no failure), got '$n'"
  KAFKA_BROKERS=$n
  ((n == 1)) || SERVICES=($(cluster_nodes) registry redis postgres)
  for ((i = 1; i <= n && n > 1; i++)); do
    # Per-node dispatch functions (svc_pid calls "${svc}_pid", ...).
    eval "kafka-${i}_pid() { kafka_node_pid $i; }; kafka-${i}_log() { kafka_node_log $i; }
      kafka-${i}_ports() { kafka_node_ports $i; }; kafka-${i}_healthy() { kafka_node_healthy $i; }
      kafka-${i}_start() { kafka_node_start $i; }"
  done
  if [[ -n $given && ${2:-} == record ]]; then
    # Switching layouts under a running broker would leave it holding the ports.
    if ((n == 1)); then
      local other
      for ((i = 1; i <= 9; i++)); do
        other=$(pid_from_file "$LOCAL_DIR/kafka-$i/kafka.pid" "-Dsj.service=kafka-$i ")
        [[ -z $other ]] || die "kafka-$i of a cluster is running in $LOCAL_DIR; stop it first (SJ_KAFKA_BROKERS=$(cat "$KAFKA_BROKERS_FILE" 2>/dev/null || echo N) ${0##*/} stop kafka)"
      done
    elif [[ -n $(pid_from_file "$KAFKA_DIR/kafka.pid" "-Dsj.service=kafka ") ]]; then
      die "the single broker is running in $LOCAL_DIR; stop it first (${0##*/} stop kafka), or use another SJ_LOCAL_DIR"
    fi
    mkdir -p "$LOCAL_DIR"
    echo "$n" >"$KAFKA_BROKERS_FILE"
  fi
}

cluster_nodes() { local i; for ((i = 1; i <= KAFKA_BROKERS; i++)); do printf 'kafka-%d\n' "$i"; done; }
# `kafka` names every node of a cluster.
expand_service() { if [[ $1 == kafka && $KAFKA_BROKERS -gt 1 ]]; then cluster_nodes; else echo "$1"; fi; }

kafka_node_port() { # node kind(0 client, 1 controller, 2 sasl)
  echo $((KAFKA_BASE_PORTS[$2] + KAFKA_PORT_STRIDE * ($1 - 1)))
}
kafka_node_pid() { pid_from_file "$LOCAL_DIR/kafka-$1/kafka.pid" "-Dsj.service=kafka-$1 "; }
kafka_node_log() { echo "$LOCAL_DIR/kafka-$1/kafka.log"; }
kafka_node_ports() { echo "$(kafka_node_port "$1" 0),$(kafka_node_port "$1" 1),$(kafka_node_port "$1" 2)"; }
kafka_node_healthy() { python3 "$SCRIPT_DIR/kafka/probe.py" 127.0.0.1 "$(kafka_node_port "$1" 0)" 2 2>/dev/null; }
cluster_bootstrap() {
  local i out=
  for ((i = 1; i <= KAFKA_BROKERS; i++)); do out+=${out:+,}127.0.0.1:$(kafka_node_port "$i" 0); done
  echo "$out"
}

# Runs in the start subshell: points the kafka_* globals at node $1, then starts it like the
# single broker (shared cluster id; the Maven classpath is copied from a node that has it).
kafka_node_start() { # node
  local i
  KAFKA_SERVICE=kafka-$1
  KAFKA_DIR=$LOCAL_DIR/kafka-$1
  KAFKA_PORT=$(kafka_node_port "$1" 0)
  KAFKA_CONTROLLER_PORT=$(kafka_node_port "$1" 1)
  KAFKA_SASL_PORT=$(kafka_node_port "$1" 2)
  KAFKA_HEAP=${SJ_KAFKA_HEAP:-512m}
  KAFKA_NODE_ID=$1
  mkdir -p "$KAFKA_DIR"
  [[ -s $LOCAL_DIR/kafka-cluster.id ]] || kafka_new_cluster_id >"$LOCAL_DIR/kafka-cluster.id"
  cp "$LOCAL_DIR/kafka-cluster.id" "$KAFKA_DIR/cluster.id"
  if [[ ! -s $KAFKA_DIR/classpath.txt ]]; then
    for ((i = 1; i <= KAFKA_BROKERS; i++)); do
      if [[ -s $LOCAL_DIR/kafka-$i/classpath.txt ]]; then
        cp "$LOCAL_DIR/kafka-$i/classpath.txt" "$LOCAL_DIR/kafka-$i/classpath.key" "$KAFKA_DIR/"
        break
      fi
    done
  fi
  kafka_start
}

kafka_node_write_config() {
  local i voters=
  for ((i = 1; i <= KAFKA_BROKERS; i++)); do voters+=${voters:+,}$i@127.0.0.1:$(kafka_node_port "$i" 1); done
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Generated by scripts/services.sh (node $KAFKA_NODE_ID of $KAFKA_BROKERS) - edits are overwritten on the next start.
process.roles=broker,controller
node.id=$KAFKA_NODE_ID
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$KAFKA_DIR/data

# Production-shaped: every internal topic and every topic created without an explicit
# replication gets 3 replicas, and acks=all needs 2 of them in sync.
offsets.topic.replication.factor=3
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
default.replication.factor=3
min.insync.replicas=2
num.partitions=1
EOF
  kafka_common_config >>"$KAFKA_DIR/server.properties"
}

# `env`: the settings that point scheduled-jobs at this stack, as shell exports
# (eval "$(scripts/services.sh env)"). The single broker needs the replication-1 overlay; a
# cluster takes each topic file's replication as it is.
print_env() {
  local bootstrap overrides
  if ((KAFKA_BROKERS > 1)); then
    bootstrap=$(cluster_bootstrap)
    overrides=
  else
    bootstrap=127.0.0.1:$KAFKA_PORT
    overrides=$ROOT_DIR/topics/overrides/single-broker.toml
  fi
  printf "export SJ_KAFKA__BOOTSTRAP_SERVERS='%s'\n" "$bootstrap"
  printf "export SJ_TOPICS__OVERRIDES='%s'\n" "$overrides"
  printf "export SJ_REGISTRY__URL='http://127.0.0.1:%s/apis/ccompat/v7'\n" "$REGISTRY_PORT"
  printf "export SJ_REDIS__PORT='%s'\n" "$REDIS_PORT"
  printf "export SJ_POSTGRES__PORT='%s'\n" "$PG_PORT"
}

# ---------------------------------------------------------------------------------------------
# registry (Apicurio)
# ---------------------------------------------------------------------------------------------

registry_log() { echo "$REGISTRY_DIR/registry.log"; }
registry_pid() { pid_from_file "$REGISTRY_DIR/registry.pid" "-Dsj.service=registry"; }
registry_ports() { echo "$REGISTRY_PORT,$REGISTRY_MANAGEMENT_PORT"; }
registry_url() { echo "http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"; }
registry_healthy() { curl -sf -m 3 -o /dev/null "$(registry_url)/subjects" 2>/dev/null; }

# The launcher moved between releases: 3.3.x has quarkus-run.jar at the archive root, 3.1-3.2
# under quarkus-app/, 3.0.x ships a *-runner.jar.
registry_launcher() { # dist-dir
  local f
  for f in "$1/quarkus-run.jar" "$1/quarkus-app/quarkus-run.jar" "$1"/*-runner.jar; do
    [[ -f $f ]] && { echo "$f"; return 0; }
  done
  return 1
}

# Prints the dist folder of Apicurio <version>, downloading it from Maven Central on first use.
registry_install() { # version
  local v=$1 dist=$REGISTRY_DIR/dist-$1 inner
  if [[ -f $dist/.complete ]]; then echo "$dist"; return 0; fi
  ensure_maven
  mkdir -p "$REGISTRY_DIR/download"
  say "registry: downloading apicurio-registry-app:$v (~160 MB, first run only)"
  mvn_quiet "$REGISTRY_DIR/maven.log" dependency:copy \
    -Dartifact="io.apicurio:apicurio-registry-app:$v:tar.gz:all" \
    -DoutputDirectory="$REGISTRY_DIR/download" || {
    say "registry: could not download $v (see $REGISTRY_DIR/maven.log)"
    return 1
  }
  rm -rf "$dist.tmp" && mkdir -p "$dist.tmp"
  tar -xzf "$REGISTRY_DIR/download/apicurio-registry-app-$v-all.tar.gz" -C "$dist.tmp" ||
    die "registry: could not extract the $v archive"
  # In case a release wraps everything in one top-level folder: flatten it.
  if ! registry_launcher "$dist.tmp" >/dev/null; then
    inner=$(find "$dist.tmp" -mindepth 1 -maxdepth 1 -type d | head -n1)
    if [[ -n $inner ]] && registry_launcher "$inner" >/dev/null; then
      mv "$inner" "$dist.flat" && rm -rf "$dist.tmp" && mv "$dist.flat" "$dist.tmp"
    fi
  fi
  registry_launcher "$dist.tmp" >/dev/null || die "registry: no quarkus-run.jar / *-runner.jar in the $v archive"
  registry_java_needed "$dist.tmp" >"$dist.tmp/.java-min"
  rm -rf "$dist" && mv "$dist.tmp" "$dist" && touch "$dist/.complete"
  # ~/.m2 keeps the archive; no need for a second 160 MB copy.
  rm -f "$REGISTRY_DIR/download/apicurio-registry-app-$v-all.tar.gz"
  echo "$dist"
}

# Apicurio 3.3.x is compiled for Java 21 (class file 65) while Debian 12 ships 17, so read the
# Java level off the registry's own classes instead of trusting a version table.
registry_java_needed() { # dist-dir
  python3 - "$1" <<'PY'
import glob, sys, zipfile
best = 17
jars = glob.glob(sys.argv[1] + "/app/*.jar") + glob.glob(sys.argv[1] + "/*-runner.jar") \
    + glob.glob(sys.argv[1] + "/quarkus-app/app/*.jar")
for jar in jars:
    with zipfile.ZipFile(jar) as z:
        names = [n for n in z.namelist() if n.startswith("io/apicurio/") and n.endswith(".class")]
        for n in names[:300]:
            head = z.read(n)[:8]
            best = max(best, int.from_bytes(head[6:8], "big") - 44)
print(best)
PY
}

registry_start() {
  mkdir -p "$REGISTRY_DIR/data" "$REGISTRY_DIR/tmp"
  ensure_cmd curl curl
  ensure_cmd python3 python3
  local v dist="" java="" need launcher storage=()
  # Preferred version first; if it cannot be downloaded or no suitable Java exists (and Debian
  # has none to install), the fallback runs on Java 17.
  for v in "$REGISTRY_VERSION" "$REGISTRY_FALLBACK_VERSION"; do
    # Check for a plausible Java before downloading 160 MB we could not run (3.0.x targets 17,
    # later 3.x 21); the downloaded classes then give the exact level.
    need=$(cat "$REGISTRY_DIR/dist-$v/.java-min" 2>/dev/null || { [[ $v == 3.0.* ]] && echo 17 || echo 21; })
    if java=$(ensure_java "$need") && dist=$(registry_install "$v"); then
      need=$(cat "$dist/.java-min" 2>/dev/null || registry_java_needed "$dist")
      if java=$(ensure_java "$need"); then break; fi
    fi
    [[ -z $java ]] &&
      say "registry: Apicurio $v needs Java $need+; none under SJ_JAVA_HOME, JAVA_HOME, PATH or /usr/lib/jvm, and Debian packages none"
    dist="" java=""
  done
  [[ -n $dist && -n $java ]] || die "registry: no runnable Apicurio Registry ($REGISTRY_VERSION or $REGISTRY_FALLBACK_VERSION); see $REGISTRY_DIR/maven.log"
  launcher=$(registry_launcher "$dist")
  # Default storage is an in-memory H2 that forgets every schema on restart; a file-backed H2
  # database (same SQL storage, just another JDBC URL) keeps them across restarts.
  case $REGISTRY_STORAGE in
    file) storage=(-Dapicurio.datasource.url="jdbc:h2:file:$REGISTRY_DIR/data/registry") ;;
    mem) storage=() ;;
    *) die "registry: SJ_REGISTRY_STORAGE must be file or mem, not '$REGISTRY_STORAGE'" ;;
  esac
  rotate_log "$(registry_log)"
  say "registry: Apicurio ${dist##*/dist-} on $java"
  (
    cd "$REGISTRY_DIR"
    # The Quarkus management interface (health/metrics) would bind 0.0.0.0:9000. It cannot be
    # switched off at run time (quarkus.management.enabled is a build-time property), so it is
    # moved to loopback on a port derived from the registry port.
    spawn "$REGISTRY_DIR/registry.pid" "$(registry_log)" "$java" -Dsj.service=registry \
      -Xms128m -Xmx"$REGISTRY_HEAP" -Djava.io.tmpdir="$REGISTRY_DIR/tmp" \
      -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_PORT" \
      -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$REGISTRY_MANAGEMENT_PORT" \
      -Dapicurio.storage.snapshot.location="$REGISTRY_DIR/tmp" \
      -Dapicurio.datasource.jdbc.initial-size=2 -Dapicurio.datasource.jdbc.min-size=2 \
      -Dapicurio.datasource.jdbc.max-size=20 \
      "${storage[@]}" -jar "$launcher"
  )
}

# ---------------------------------------------------------------------------------------------
# redis
# ---------------------------------------------------------------------------------------------

redis_log() { echo "$REDIS_DIR/redis.log"; }
redis_pid() { pid_from_file "$REDIS_DIR/redis.pid" "redis-server"; }
redis_ports() { echo "$REDIS_PORT,$REDIS_TLS_PORT"; }
redis_healthy() {
  command -v redis-cli >/dev/null 2>&1 &&
    [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
}

redis_install() {
  command -v redis-server >/dev/null 2>&1 && return 0
  apt_install redis-server
  # Outside containers the package's init script starts a system instance on 6379; it is not
  # ours (wrong dir, no AOF) and would hold the port, so stop it.
  local sys_pid
  sys_pid=$(cat /run/redis/redis-server.pid 2>/dev/null || true)
  if pid_matches "$sys_pid" redis-server; then
    say "redis: stopping the instance the package started (pid $sys_pid)"
    { command -v service >/dev/null && service redis-server stop >/dev/null 2>&1; } || kill "$sys_pid" 2>/dev/null || true
  fi
}

redis_start() {
  mkdir -p "$REDIS_DIR/data"
  redis_install
  tls_ensure
  cat >"$REDIS_DIR/redis.conf" <<EOF
# Generated by scripts/services.sh - edits are overwritten on the next start.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile "$REDIS_DIR/redis.pid"
logfile "$(redis_log)"
dir "$REDIS_DIR/data"
# AOF so a restart (including SIGKILL, minus <=1 s) keeps the data. No periodic RDB snapshots:
# each forks and writes the whole dataset (seconds of a core at a few million keys), which AOF
# makes redundant here and which skewed benchmarks that happened to overlap one.
appendonly yes
appendfsync everysec
save ""
EOF
  redis_tls_config >>"$REDIS_DIR/redis.conf"
  rotate_log "$(redis_log)"
  rm -f "$REDIS_DIR/redis.pid"
  # redis daemonizes itself (own session, pid file); a config error is printed before that.
  redis-server "$REDIS_DIR/redis.conf" </dev/null >>"$(redis_log)" 2>&1 9>&- ||
    die "redis: redis-server refused to start; see $(redis_log)"
}

# ---------------------------------------------------------------------------------------------
# postgres
# ---------------------------------------------------------------------------------------------

PG_BIN=
pg_find_bin() {
  [[ -n $PG_BIN ]] && return 0
  local d
  if [[ -n ${SJ_PG_BIN:-} ]]; then
    PG_BIN=$SJ_PG_BIN
    return 0
  fi
  # Debian keeps server binaries out of PATH; take the newest installed major version.
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  if [[ -n $d && -x $d/postgres ]]; then
    PG_BIN=$d
  elif command -v pg_config >/dev/null 2>&1 && [[ -x $(pg_config --bindir)/postgres ]]; then
    PG_BIN=$(pg_config --bindir)
  else
    return 1
  fi
}

pg_log() { echo "$PG_DIR/postgres.log"; }
# The postmaster writes its pid on the first line of postmaster.pid (root can read it).
pg_pid() { pid_from_file "$PG_DATA/postmaster.pid" "$PG_DATA"; }
postgres_ports() { echo "$PG_PORT"; }

# Postgres refuses to run as root, so as root everything server-side runs as the postgres OS
# user; as a normal user it simply runs as that user. Subshell + cd: the caller's cwd may not be
# readable by postgres (e.g. /root), which makes psql/pg_ctl complain.
as_pg() {
  if [[ $EUID -eq 0 ]]; then
    (cd "$PG_DIR" && runuser -u postgres -- "$@")
  else
    (cd "$PG_DIR" && "$@")
  fi
}

postgres_healthy() {
  pg_find_bin || return 1
  # A real query over TCP with the app credentials (pg_isready without a password would make
  # the server log a failed authentication on every status call).
  [[ $(PGPASSWORD=$PG_APP_PASSWORD PGCONNECT_TIMEOUT=3 "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" \
    -U "$PG_APP_USER" -d "$PG_APP_DB" -tAc 'select 1' 2>/dev/null) == 1 ]]
}

# Ready for the superuser over the private unix socket; the app role may not exist yet.
postgres_socket_ready() { pg_find_bin && "$PG_BIN/pg_isready" -q -h "$PG_DATA" -p "$PG_PORT" -U postgres -d postgres -t 2 2>/dev/null; }

postgres_install() {
  pg_find_bin && return 0
  apt_install postgresql
  pg_find_bin || die "postgres: no server binaries under /usr/lib/postgresql/*/bin after install"
  # Outside containers the package creates and starts a "main" cluster on 5432; stop it so it
  # does not take our port (its data stays where Debian put it).
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $1, $2}' | while read -r ver name; do
      say "postgres: stopping the packaged cluster $ver/$name"
      pg_ctlcluster "$ver" "$name" stop || true
    done
  fi
}

postgres_start() {
  postgres_install
  if [[ $EUID -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --create-home --shell /bin/bash postgres
  fi
  mkdir -p "$PG_DIR"
  [[ $EUID -eq 0 ]] && chown postgres: "$PG_DIR"
  if [[ $EUID -eq 0 ]] && ! as_pg test -w "$PG_DIR"; then
    # The project sits under a folder the postgres user cannot traverse (e.g. a mktemp
    # clone, mode 700): keep this checkout's cluster under /var/lib instead, and remember
    # where, so status/stop/logs find it.
    rmdir "$PG_DIR" 2>/dev/null || true
    PG_DIR=/var/lib/scheduled-jobs/$(printf '%s' "$LOCAL_DIR" | sha1sum | cut -c1-12)/postgres
    PG_DATA=$PG_DIR/data
    mkdir -p "$PG_DIR"
    chmod 755 "$(dirname "$(dirname "$PG_DIR")")" "$(dirname "$PG_DIR")"
    chown postgres: "$PG_DIR"
    printf '%s\n' "$PG_DIR" >"$PG_POINTER"
    say "postgres: $LOCAL_DIR is not reachable by the postgres user; its data lives in $PG_DIR"
  fi
  as_pg test -w "$PG_DIR" ||
    die "postgres: the postgres OS user cannot write $PG_DIR (every parent folder needs o+x); set SJ_LOCAL_DIR elsewhere"
  if [[ ! -f $PG_DATA/PG_VERSION ]]; then
    say "postgres: initdb $PG_DATA"
    rm -rf "$PG_DATA"
    # Local (unix socket) connections are trusted: the socket lives inside the 0700 data folder,
    # so only the postgres OS user (and root) can reach it. TCP needs a password.
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 ||
      die "postgres: initdb failed; see $PG_DIR/initdb.log"
    echo "include_if_exists = 'sj-local.conf'" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
  fi
  as_pg tee "$PG_DATA/sj-local.conf" >/dev/null <<EOF
# Generated by scripts/services.sh - edits are overwritten on the next start.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DATA'
max_connections = 200
password_encryption = 'scram-sha-256'
log_line_prefix = '%m [%p] %q%u@%d '
# Sized for the jobs' batch statements on a small machine (defaults are 128MB / 1GB / 4MB):
# fewer checkpoints during bulk cancellations, aggregates and hashes kept in memory.
shared_buffers = 256MB
max_wal_size = 4GB
work_mem = 32MB
EOF
  postgres_tls_config
  rotate_log "$(pg_log)"
  # pg_ctl -W: return at once; readiness is checked like for every other service. pg_ctl starts
  # the postmaster in its own session with output appended to the log file.
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$(pg_log)" -W start </dev/null >>"$PG_DIR/pg_ctl.log" 2>&1 9>&- ||
    die "postgres: pg_ctl start failed; see $PG_DIR/pg_ctl.log and $(pg_log)"
  # pg_ctl -W returns before the postmaster has written postmaster.pid, which is how every
  # later step finds the process.
  local i
  for ((i = 0; i < 100; i++)); do
    [[ -n $(pg_pid) ]] && return 0
    sleep 0.1
  done
  die "postgres: no postmaster.pid after 10 s; see $(pg_log)"
}

# Creates/refreshes the application role and database (idempotent, cheap).
postgres_bootstrap() {
  pg_find_bin || return 1
  as_pg "$PG_BIN/psql" -X -q -h "$PG_DATA" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    >>"$PG_DIR/bootstrap.log" 2>&1 <<EOF
SELECT format('CREATE ROLE %I LOGIN', '$PG_APP_USER')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_APP_USER') \gexec
-- SUPERUSER: the test-suite creates (and drops) one database per test.
ALTER ROLE "$PG_APP_USER" WITH LOGIN SUPERUSER PASSWORD '$PG_APP_PASSWORD';
SELECT format('CREATE DATABASE %I OWNER %I', '$PG_APP_DB', '$PG_APP_USER')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_APP_DB') \gexec
EOF
}

# ---------------------------------------------------------------------------------------------
# per-service dispatch
# ---------------------------------------------------------------------------------------------

svc_pid() { case $1 in postgres) pg_pid ;; *) "${1}_pid" ;; esac; }
svc_log() { case $1 in postgres) pg_log ;; *) "${1}_log" ;; esac; }
svc_ports() { "${1}_ports"; }
svc_healthy() { "${1}_healthy"; }
svc_start() { "${1}_start"; }
svc_default_timeout() { case $1 in kafka | kafka-*) echo 120 ;; registry) echo 180 ;; redis) echo 20 ;; postgres) echo 60 ;; esac; }
# Postgres treats SIGTERM as "smart" shutdown, which waits for every client to disconnect - with
# test clients attached that never happens. SIGINT is its "fast" shutdown.
svc_stop_signal() { case $1 in postgres) echo INT ;; *) echo TERM ;; esac; }

svc_state() { # -> healthy | starting | down | port-taken
  local pid
  pid=$(svc_pid "$1")
  if [[ -n $pid ]]; then
    svc_healthy "$1" && echo healthy || echo starting
  else
    local p
    for p in $(svc_ports "$1" | tr , ' '); do
      port_in_use "$p" && { echo port-taken; return 0; }
    done
    echo down
  fi
}

fail_service() { # service reason
  local log
  log=$(svc_log "$1")
  {
    printf '[services] ERROR: %s %s\n' "$1" "$2"
    printf '[services] log file: %s   (last lines below; also: %s logs %s)\n' "$log" "$0" "$1"
    tail -n 25 "$log" 2>/dev/null | sed 's/^/    /'
  } >&2
}

# Waits until the service answers its health check; returns 1 (after explaining why) on timeout
# or when the process died.
wait_healthy() { # service
  local svc=$1 timeout deadline pid
  timeout=${SJ_START_TIMEOUT:-$(svc_default_timeout "$svc")}
  deadline=$(($(now) + timeout))
  while true; do
    pid=$(svc_pid "$svc")
    if [[ -z $pid ]]; then
      fail_service "$svc" "process exited during startup"
      return 1
    fi
    if [[ $svc == postgres ]]; then
      if postgres_socket_ready; then
        postgres_bootstrap || { fail_service postgres "could not create role/database (see $PG_DIR/bootstrap.log)"; return 1; }
        postgres_healthy && return 0
      fi
    elif svc_healthy "$svc"; then
      return 0
    fi
    if (($(now) >= deadline)); then
      fail_service "$svc" "did not become healthy within ${timeout}s (pid $pid still running)"
      return 1
    fi
    sleep 0.5
  done
}

# Sends the stop signal; returns the pid that has to go away (empty if nothing ran).
stop_begin() { # service
  local pid
  pid=$(svc_pid "$1")
  [[ -z $pid ]] && return 0
  say "$1: stopping (pid $pid, SIG$(svc_stop_signal "$1"))"
  kill -s "$(svc_stop_signal "$1")" "$pid" 2>/dev/null || true
  echo "$pid"
}

stop_finish() { # service pid
  local svc=$1 pid=$2 deadline
  [[ -z $pid ]] && return 0
  deadline=$(($(now) + STOP_TIMEOUT))
  while pid_alive "$pid" && (($(now) < deadline)); do sleep 0.2; done
  if pid_alive "$pid"; then
    say "$svc: still running after ${STOP_TIMEOUT}s, sending SIGKILL"
    # Each service runs as the leader of its own process group (setsid / daemonize / pg_ctl);
    # killing the group also takes out postgres backends and other children.
    if [[ $(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') == "$pid" ]]; then
      kill -KILL -- "-$pid" 2>/dev/null || true
    else
      kill -KILL "$pid" 2>/dev/null || true
    fi
    local i
    for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    if pid_alive "$pid"; then die "$svc: pid $pid survived SIGKILL"; fi
  fi
  case $svc in
    kafka) rm -f "$KAFKA_DIR/kafka.pid" ;;
    kafka-*) rm -f "$LOCAL_DIR/$svc/kafka.pid" ;;
    registry) rm -f "$REGISTRY_DIR/registry.pid" ;;
    redis) rm -f "$REDIS_DIR/redis.pid" ;;
  esac
  return 0
}

stop_services() { # services...
  local svc pids=()
  for svc in "$@"; do pids+=("$(stop_begin "$svc")"); done
  local i
  for i in "${!pids[@]}"; do stop_finish "${@:i+1:1}" "${pids[$i]}"; done
}

# Starts every given service that is not already up, then waits for all of them in parallel
# (launch first, wait after: JVM startups overlap).
start_services() { # services...
  local svc state to_wait=() failed=0
  for svc in "$@"; do
    state=$(svc_state "$svc")
    case $state in
      healthy) ;;
      starting) to_wait+=("$svc") ;;
      port-taken)
        fail_service "$svc" "cannot start: port $(svc_ports "$svc") on 127.0.0.1 is used by a process this script did not start (change SJ_*_PORT or stop it)"
        failed=1
        ;;
      down)
        say "$svc: starting"
        # In a child so that a failing install/launch (die) only fails this service; `& wait`
        # rather than `if (...)` because bash ignores set -e inside a tested subshell.
        (svc_start "$svc") &
        if wait $!; then to_wait+=("$svc"); else failed=1; fi
        [[ $svc == postgres ]] && pg_resolve
        ;;
    esac
  done
  for svc in "${to_wait[@]}"; do
    wait_healthy "$svc" || failed=1
  done
  return $failed
}

print_status() { # services... ; returns 1 if any is not healthy
  local svc state pid rc=0
  printf '%-9s %-15s %-8s %s\n' SERVICE PORT PID STATE
  for svc in "$@"; do
    state=$(svc_state "$svc")
    pid=$(svc_pid "$svc")
    printf '%-9s %-15s %-8s %s\n' "$svc" "$(svc_ports "$svc")" "${pid:--}" "$state"
    [[ $state == healthy ]] || rc=1
  done
  printf '(data and logs under %s)\n' "$LOCAL_DIR"
  return $rc
}

# One mutating command at a time (two test jobs calling `up` together must not start two
# brokers). The lock fd is closed in every daemon we spawn.
take_lock() {
  mkdir -p "$LOCAL_DIR"
  exec 9>"$LOCAL_DIR/.services.lock"
  flock -w 900 9 || die "another services.sh is still running (lock $LOCAL_DIR/.services.lock)"
}

# ---------------------------------------------------------------------------------------------
# kafka-produce: a producer nobody here wrote
# ---------------------------------------------------------------------------------------------

# Apache Kafka's Java producer and Apache Avro's encoder (scripts/kafka/client-pom.xml, pinned
# there and resolved like the broker) write stdin's records with the codecs they name: the
# tests' proof that the processor reads what a Java service writes with zstd, lz4, snappy or
# gzip. `java File.java` compiles in memory; the jdk.compiler module it needs ships in Debian's
# JRE package too.
kafka_produce() { # topic registry-url|- [bootstrap]
  kafka_healthy || die "kafka is not running (scripts/services.sh up)"
  local java
  java=$(ensure_java 17) || die "kafka-produce: needs Java 17+"
  # Its own folder: the client is the same whichever broker (or cluster node) it talks to.
  local dir=$LOCAL_DIR/kafka-client
  mkdir -p "$dir"
  maven_classpath "$SCRIPT_DIR/kafka/client-pom.xml" "$dir/classpath.txt" "$dir/maven.log" "the Kafka Java client and Apache Avro"
  "$java" -cp "$(cat "$dir/classpath.txt")" "$SCRIPT_DIR/kafka/ExternalProducer.java" \
    "${3:-127.0.0.1:$KAFKA_PORT}" "$1" "$2" ||
    die "kafka-produce: the Java producer failed (its error is above)"
}

# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------

need_service_arg() { [[ $# -ge 1 ]] && { is_service "$1" || [[ $1 == kafka ]]; } || usage; }

main() {
  [[ $# -ge 1 ]] || usage
  local cmd=$1
  shift
  if [[ $cmd == up && ${1:-} == --brokers ]]; then
    [[ $# -eq 2 ]] || usage
    cluster_select "$2" record
    shift 2
  elif [[ $cmd == up || $cmd == start || $cmd == restart ]]; then
    cluster_select "" record
  else
    cluster_select
  fi
  case $cmd in
    up)
      [[ $# -eq 0 ]] || usage
      take_lock
      local rc=0
      start_services "${SERVICES[@]}" || rc=1
      print_status "${SERVICES[@]}" || rc=1
      [[ $rc -eq 0 ]] || die "not every service is healthy (see the errors above)"
      ;;
    down)
      [[ $# -eq 0 ]] || usage
      take_lock
      stop_services "${SERVICES[@]}"
      print_status "${SERVICES[@]}" || true
      ;;
    status)
      [[ $# -eq 0 ]] || usage
      print_status "${SERVICES[@]}"
      ;;
    env)
      [[ $# -eq 0 ]] || usage
      print_env
      ;;
    start | stop | restart)
      need_service_arg "$@"
      [[ $# -eq 1 ]] || usage
      take_lock
      local rc=0 svcs
      mapfile -t svcs < <(expand_service "$1")
      [[ $cmd == start ]] || stop_services "${svcs[@]}"
      if [[ $cmd != stop ]]; then start_services "${svcs[@]}" || rc=1; fi
      print_status "${svcs[@]}" || { [[ $cmd == stop ]] || rc=1; }
      return $rc
      ;;
    logs)
      need_service_arg "$@"
      local log follow=()
      log=$(svc_log "$(expand_service "$1" | head -n1)")
      case ${2:-} in
        '') ;;
        -f | --follow) follow=(-F) ;;
        *) usage ;;
      esac
      [[ -e $log || ${#follow[@]} -gt 0 ]] || die "$1: no log yet at $log"
      exec tail -n "${SJ_LOG_LINES:-200}" "${follow[@]}" "$log"
      ;;
    kafka-scram-user)
      [[ $# -eq 2 ]] || usage
      # A cluster keeps the credential in its metadata too; any node takes the request.
      if ((KAFKA_BROKERS > 1)); then KAFKA_DIR=$LOCAL_DIR/kafka-1 KAFKA_PORT=$(kafka_node_port 1 0); fi
      kafka_healthy || die "kafka is not running (scripts/services.sh up)"
      local java
      java=$(ensure_java 17) || die "kafka-scram-user: needs Java 17+"
      # Stored in the cluster metadata (KRaft): takes effect on the SASL listeners at once. One
      # call per mechanism: the broker refuses two alterations of one user in one request.
      local mechanism
      for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
        "$java" -cp "$(cat "$KAFKA_DIR/classpath.txt")" -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/log4j2.yaml" \
          kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --alter \
          --add-config "$mechanism=[iterations=4096,password=$2]" --entity-type users --entity-name "$1" >/dev/null ||
          die "kafka-scram-user: could not set the $mechanism credential of $1"
      done
      say "kafka: SCRAM-SHA-256/512 user $1 set (SASL_PLAINTEXT on 127.0.0.1:$KAFKA_SASL_PORT, SASL_SSL on 127.0.0.1:$KAFKA_SASL_SSL_PORT)"
      ;;
    kafka-produce)
      [[ $# -ge 2 && $# -le 3 ]] || usage
      if ((KAFKA_BROKERS > 1)); then KAFKA_DIR=$LOCAL_DIR/kafka-1 KAFKA_PORT=$(kafka_node_port 1 0); fi
      kafka_produce "$@"
      ;;
    -h | --help | help) usage 0 ;;
    *)
      say "unknown command '$cmd'"
      usage
      ;;
  esac
}

main "$@"
