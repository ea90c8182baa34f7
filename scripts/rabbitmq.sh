#!/usr/bin/env bash
# Start or stop a private RabbitMQ node for tests and benchmarks.
#
#   scripts/rabbitmq.sh start [PORT]   start a node (free port unless given), print its AMQP port
#   scripts/rabbitmq.sh stop [PORT]    stop the node on PORT (default: the last one started)
#                                      and delete its directory
#   scripts/rabbitmq.sh restart [PORT] stop and start it again on the same data (durability checks)
#   scripts/rabbitmq.sh status [PORT]  print the port and exit 0 if that node accepts AMQP
#   scripts/rabbitmq.sh env [PORT]     print the node's environment
#   scripts/rabbitmq.sh ctl PORT ARGS.. run rabbitmqctl against that node (e.g. `ctl 5673 list_queues`)
#
# Each node is private: its own node name, Erlang cookie (HOME), epmd port, distribution port,
# config, data and log directories under $LOCKGATE_RABBITMQ_DIR (default
# ${TMPDIR:-/tmp}/lockgate-rabbitmq/PORT), all bound to 127.0.0.1, no plugins. `start` is
# idempotent: a node already running on the requested port (or, without a port, the last one
# started) is reused. Debian's rabbitmq-server is installed with apt-get if missing, and the
# package's own system service is stopped so that it does not hold port 5672.
#
# LOCKGATE_RABBITMQ_CONF may hold extra rabbitmq.conf lines for a new node (e.g.
# "max_message_size = 1000"; see RabbitMQ's configuration docs).
#
# Only the port goes to stdout; progress goes to stderr, so `port=$(scripts/rabbitmq.sh start)`.
set -euo pipefail

BASE="${LOCKGATE_RABBITMQ_DIR:-${TMPDIR:-/tmp}/lockgate-rabbitmq}"
RMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
START_TIMEOUT="${LOCKGATE_RABBITMQ_START_TIMEOUT:-120}"

log() { printf 'rabbitmq.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

stop_system_service() {
    # The Debian package enables and starts its own node on 5672 (where systemd runs).
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/rabbitmq-server ] && pgrep -u rabbitmq -f beam >/dev/null 2>&1; then
        as_root /etc/init.d/rabbitmq-server stop >/dev/null 2>&1 || true
    fi
}

ensure_installed() {
    if [ ! -x "$RMQ_SERVER" ]; then
        log "installing rabbitmq-server with apt-get"
        as_root apt-get update -q >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >&2
    fi
    stop_system_service
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True when 127.0.0.1:$1 answers the AMQP 0-9-1 protocol header with a method frame
# (connection.start), i.e. the node has finished booting and accepts connections.
amqp_ready() {
    local reply
    # shellcheck disable=SC2016 # $1 expands in the inner shell
    reply=$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        head -c 1 <&3 | od -An -tx1' _ "$1" 2>/dev/null) || return 1
    [ "${reply// /}" = "01" ]
}

node_dir() { echo "$BASE/$1"; }

node_pid() {
    local pidfile
    pidfile="$(node_dir "$1")/wrapper.pid"
    [ -f "$pidfile" ] || return 1
    local pid
    pid=$(cat "$pidfile")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

last_port() {
    [ -f "$BASE/last" ] || return 1
    cat "$BASE/last"
}

write_env() {
    local port=$1 dist=$2 epmd=$3 dir=$4
    cat >"$dir/env" <<EOF
export HOME='$dir/home'
export ERL_EPMD_PORT=$epmd
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_NODENAME='lockgate-rmq-$port@localhost'
export RABBITMQ_USE_LONGNAME=false
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$port
export RABBITMQ_DIST_PORT=$dist
export RABBITMQ_CTL_DIST_PORT_MIN=$((dist + 1))
export RABBITMQ_CTL_DIST_PORT_MAX=$((dist + 10))
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
export RABBITMQ_CONF_ENV_FILE='$dir/rabbitmq-env.conf'
export RABBITMQ_CONFIG_FILE='$dir/rabbitmq.conf'
export RABBITMQ_ADVANCED_CONFIG_FILE='$dir/advanced.config'
export RABBITMQ_ENABLED_PLUGINS_FILE='$dir/enabled_plugins'
export RABBITMQ_MNESIA_BASE='$dir/mnesia'
export RABBITMQ_LOG_BASE='$dir/log'
export RABBITMQ_LOGS='$dir/log/rabbit.log'
export RABBITMQ_PID_FILE='$dir/rabbit.pid'
EOF
}

cmd_start() {
    local port="${1:-}"
    if [ -z "$port" ]; then
        if port=$(last_port) && node_pid "$port" >/dev/null && amqp_ready "$port"; then
            log "reusing the node on port $port"
            echo "$port"
            return 0
        fi
        port=$(free_port)
    elif node_pid "$port" >/dev/null; then
        if amqp_ready "$port"; then
            log "reusing the node on port $port"
            echo "$port"
            return 0
        fi
        log "a node on port $port is running but not answering; restarting it"
        cmd_stop "$port"
    fi
    port_in_use "$port" && die "port $port is already taken by another process"

    ensure_installed

    local dir dist epmd
    dir=$(node_dir "$port")
    rm -rf "$dir"
    mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
    dist=$(free_port)
    epmd=$(free_port)
    write_env "$port" "$dist" "$epmd" "$dir"
    : >"$dir/rabbitmq-env.conf"
    echo '[].' >"$dir/enabled_plugins"
    echo '[].' >"$dir/advanced.config"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$port
loopback_users.guest = true
log.console = false
log.file.level = info
${LOCKGATE_RABBITMQ_CONF:-}
EOF
    # A private random cookie, readable only by us, as Erlang insists.
    head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/home/.erlang.cookie"
    chmod 400 "$dir/home/.erlang.cookie"

    echo "$port" >"$BASE/last"
    launch "$port"
    echo "$port"
}

# Start the node whose directory is already set up, and wait until it accepts AMQP.
launch() {
    local port=$1 dir
    dir=$(node_dir "$port")
    log "starting RabbitMQ on 127.0.0.1:$port (dir $dir)"
    (
        # shellcheck disable=SC1091
        . "$dir/env"
        cd "$dir"
        exec setsid "$RMQ_SERVER" </dev/null >"$dir/log/stdout.log" 2>&1
    ) &
    local pid=$!
    echo "$pid" >"$dir/wrapper.pid"

    local deadline=$((SECONDS + START_TIMEOUT))
    until amqp_ready "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$dir/log/stdout.log" "$dir/log/rabbit.log" >&2 2>/dev/null || true
            die "RabbitMQ exited during startup"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 40 "$dir/log/stdout.log" "$dir/log/rabbit.log" >&2 2>/dev/null || true
            halt "$port"
            die "RabbitMQ did not accept AMQP connections within ${START_TIMEOUT}s"
        fi
        sleep 0.5
    done
    log "RabbitMQ is accepting AMQP connections on 127.0.0.1:$port"
}

# Stop the node's processes, keeping its directory (data, logs, config).
halt() {
    local port=$1 dir pid
    dir=$(node_dir "$port")
    if pid=$(node_pid "$port"); then
        log "stopping the node on port $port"
        # The wrapper script turns SIGTERM into a clean shutdown of the Erlang VM.
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 60))
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "node did not stop in time; killing it"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # The Erlang VM itself, should it have outlived its wrapper.
    if [ -f "$dir/rabbit.pid" ]; then
        local beam
        beam=$(cat "$dir/rabbit.pid")
        if kill -0 "$beam" 2>/dev/null; then
            kill -KILL "$beam" 2>/dev/null || true
        fi
    fi
    # The private epmd this node started.
    if [ -f "$dir/env" ]; then
        (
            # shellcheck disable=SC1091
            . "$dir/env"
            epmd -port "$ERL_EPMD_PORT" -kill >/dev/null 2>&1 || true
        )
    fi
}

cmd_stop() {
    local port="${1:-}"
    if [ -z "$port" ]; then
        port=$(last_port) || { log "no node to stop"; return 0; }
    fi
    halt "$port"
    rm -rf "$(node_dir "$port")"
    if [ "$(last_port 2>/dev/null || true)" = "$port" ]; then
        rm -f "$BASE/last"
    fi
}

cmd_restart() {
    local port="${1:-}"
    if [ -z "$port" ]; then
        port=$(last_port) || die "no node started"
    fi
    [ -f "$(node_dir "$port")/env" ] || die "no node on port $port"
    halt "$port"
    launch "$port"
    echo "$port"
}

cmd_status() {
    local port="${1:-}"
    if [ -z "$port" ]; then
        port=$(last_port) || { log "no node started"; return 1; }
    fi
    node_pid "$port" >/dev/null || { log "no node running on port $port"; return 1; }
    amqp_ready "$port" || { log "node on port $port does not answer AMQP"; return 1; }
    echo "$port"
}

cmd_env() {
    local port="${1:-}"
    if [ -z "$port" ]; then
        port=$(last_port) || die "no node started"
    fi
    cat "$(node_dir "$port")/env"
}

cmd_ctl() {
    local port="${1:?usage: ctl PORT ARGS...}"
    shift
    local dir
    dir=$(node_dir "$port")
    [ -f "$dir/env" ] || die "no node on port $port"
    (
        # shellcheck disable=SC1091
        . "$dir/env"
        # Not /usr/sbin/rabbitmqctl: Debian's wrapper resets HOME, and so the cookie.
        exec /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBITMQ_NODENAME" "$@"
    )
}

mkdir -p "$BASE"
case "${1:-}" in
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    restart) cmd_restart "${2:-}" ;;
    status) cmd_status "${2:-}" ;;
    env) cmd_env "${2:-}" ;;
    ctl)
        shift
        cmd_ctl "$@"
        ;;
    *)
        echo "usage: $0 start|stop|restart|status|env [PORT] | ctl PORT ARGS..." >&2
        exit 2
        ;;
esac
