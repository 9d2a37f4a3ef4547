#!/usr/bin/env bash
# Start, stop and check the Triton Inference Server that serves this project's model repository.
#
# Where a Docker engine answers and a GPU exists, it runs the NGC image (built from docker/Dockerfile.server);
# anywhere else it runs the embedded, CPU-only server from the nvidia-pytriton wheel (serving/embedded.py), which
# serves the same repository unchanged. Endpoints bind to 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

IMAGE="${TRITON_IMAGE:-kd-anomaly-triton:24.10}"
CONTAINER="${TRITON_CONTAINER:-kd-anomaly-triton}"
STATE_DIR="${TRITON_STATE_DIR:-$ROOT/.triton}"
PID_FILE="$STATE_DIR/server.pid"
LOG_FILE="$STATE_DIR/server.log"
STATE_FILE="$STATE_DIR/server.env"   # mode and ports of the running server, for status/stop
SUPERVISOR_FILE="$STATE_DIR/supervisor.json"   # the embedded supervisor's restarts and heals

usage() {
    cat <<EOF
Usage: $(basename "$0") [start|stop|status|restart] [options] [-- kd-server options]

Commands:
  start     start the server in the background and wait until /v2/health/ready answers (default)
  stop      stop it cleanly (SIGTERM / docker stop) and remove the pid file
  status    exit 0 when the server answers ready, 1 when running but not ready, 3 when not running;
            prints the supervisor's restarts and heals (embedded) or Docker's restart count and health
  restart   stop, then start

The embedded server runs under its supervisor (kd-server): tritonserver is restarted when it crashes and a
dead backend is reloaded in place after a failed liveness check (a real inference per model); options after
'--' go to kd-server (see kd-server --help: --restart-sec, --start-limit-burst, --health-interval, ...).
The container runs with --restart unless-stopped and a HEALTHCHECK that does a real inference (kd-health).

Options:
  --model-repository DIR   model repository to serve (default: model_repository)
  --http-port N            HTTP port on 127.0.0.1 (default: 8000)
  --grpc-port N            gRPC port on 127.0.0.1 (default: 8001)
  --metrics-port N         metrics port on 127.0.0.1 (default: 8002)
  --mode auto|docker|embedded
                           docker: image $IMAGE (built from docker/Dockerfile.server on first use)
                           with --gpus all; embedded: the CPU-only server of the nvidia-pytriton wheel;
                           auto (default): docker when 'docker info' and 'nvidia-smi -L' both succeed
  --timeout S              seconds to wait for readiness (default: 180)
  -h, --help               show this help

Environment: PYTHON (default .venv/bin/python, else python3), TRITON_STATE_DIR (default .triton),
TRITON_IMAGE, TRITON_CONTAINER.
Files: \$TRITON_STATE_DIR/server.pid, server.log, server.env, supervisor.json.
EOF
}

die() { echo "ERROR: $*" >&2; exit 2; }

COMMAND="start"
if [[ $# -gt 0 && "$1" != -* ]]; then COMMAND="$1"; shift; fi
MODEL_REPOSITORY="" HTTP_PORT="" GRPC_PORT="" METRICS_PORT="" MODE="" TIMEOUT=180
SERVER_ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --) shift; SERVER_ARGS=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        --model-repository) MODEL_REPOSITORY="${2:?--model-repository needs a value}"; shift 2 ;;
        --http-port) HTTP_PORT="${2:?--http-port needs a value}"; shift 2 ;;
        --grpc-port) GRPC_PORT="${2:?--grpc-port needs a value}"; shift 2 ;;
        --metrics-port) METRICS_PORT="${2:?--metrics-port needs a value}"; shift 2 ;;
        --mode) MODE="${2:?--mode needs a value}"; shift 2 ;;
        --timeout) TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
        --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
case "$COMMAND" in start|stop|status|restart) ;; -h|--help|help) usage; exit 0 ;; *) usage >&2; die "unknown command: $COMMAND" ;; esac

# What a running server recorded wins for stop/status; command-line values win for start.
SAVED_MODE="" SAVED_HTTP_PORT=""
if [[ -f "$STATE_FILE" ]]; then
    SAVED_MODE="$(sed -n 's/^MODE=//p' "$STATE_FILE")"
    SAVED_HTTP_PORT="$(sed -n 's/^HTTP_PORT=//p' "$STATE_FILE")"
fi
for port in "$HTTP_PORT" "$GRPC_PORT" "$METRICS_PORT"; do
    [[ -z "$port" || "$port" =~ ^[0-9]+$ ]] || die "not a port number: $port"
done
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout needs whole seconds: $TIMEOUT"
case "${MODE:-auto}" in auto|docker|embedded) ;; *) die "--mode must be auto, docker or embedded: $MODE" ;; esac

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="python3"; fi
fi

is_ready() {  # $1: HTTP port
    local url="http://127.0.0.1:$1/v2/health/ready"
    if command -v curl >/dev/null 2>&1; then
        curl -sf -o /dev/null --max-time 2 "$url"
    else
        "$PYTHON" -c 'import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)' "$url"
    fi
}

embedded_pid() {  # prints the pid of a live embedded server, fails otherwise
    [[ -f "$PID_FILE" ]] || return 1
    local pid; pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

container_running() {
    command -v docker >/dev/null 2>&1 &&
        [[ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER" 2>/dev/null || true)" == "true" ]]
}

running() {  # is a server that this script started still running?
    case "$SAVED_MODE" in
        docker) container_running ;;
        *) embedded_pid >/dev/null ;;
    esac
}

choose_mode() {
    local mode="${MODE:-auto}"
    if [[ "$mode" == "auto" ]]; then
        if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 &&
            command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            mode="docker"
        else
            mode="embedded"
        fi
    fi
    echo "$mode"
}

start_docker() {
    if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
        echo "Building $IMAGE from docker/Dockerfile.server (first use)..."
        docker build -f docker/Dockerfile.server -t "$IMAGE" .
    fi
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    # unless-stopped: Docker restarts a container whose server crashed; the image's HEALTHCHECK (a real inference)
    # marks a dead backend unhealthy, which Kubernetes' liveness probe turns into a restart (docker/README.md).
    docker run -d --name "$CONTAINER" --gpus all --shm-size=1g --restart unless-stopped \
        -p "127.0.0.1:$HTTP_PORT:8000" -p "127.0.0.1:$GRPC_PORT:8001" -p "127.0.0.1:$METRICS_PORT:8002" \
        -v "$REPO_ABS:/models:ro" "$IMAGE" >/dev/null
}

start_embedded() {
    : >"$LOG_FILE"
    # setsid: the server survives this shell and its terminal; the CLI appends the server log to the same file.
    rm -f "$SUPERVISOR_FILE"
    setsid nohup "$PYTHON" -m serving.cli --model-repository "$REPO_ABS" --host 127.0.0.1 \
        --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --metrics-port "$METRICS_PORT" \
        --log-file "$LOG_FILE" --timeout "$TIMEOUT" --state-file "$SUPERVISOR_FILE" ${SERVER_ARGS[@]+"${SERVER_ARGS[@]}"} \
        >>"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
}

print_log_tail() {
    echo "---- server log (tail) ----" >&2
    if [[ "$1" == "docker" ]]; then
        docker logs --tail 40 "$CONTAINER" >&2 2>&1 || true
    elif grep -q '^ERROR: ' "$LOG_FILE" 2>/dev/null; then
        # kd-server's own report: the log's error lines (the cause), then its tail.
        sed -n '/^ERROR: /,$p' "$LOG_FILE" >&2
    else
        tail -n 40 "$LOG_FILE" >&2 || true
    fi
}

do_start() {
    if running; then
        echo "Triton already running ($SAVED_MODE mode) at http://127.0.0.1:${SAVED_HTTP_PORT:-?}"
        return 0
    fi
    MODEL_REPOSITORY="${MODEL_REPOSITORY:-model_repository}"
    [[ -d "$MODEL_REPOSITORY" ]] || die "model repository not found: $MODEL_REPOSITORY"
    REPO_ABS="$(cd "$MODEL_REPOSITORY" && pwd)"
    HTTP_PORT="${HTTP_PORT:-8000}" GRPC_PORT="${GRPC_PORT:-8001}" METRICS_PORT="${METRICS_PORT:-8002}"
    mkdir -p "$STATE_DIR"
    local mode; mode="$(choose_mode)"
    echo "Starting Triton ($mode mode) on 127.0.0.1 http:$HTTP_PORT grpc:$GRPC_PORT metrics:$METRICS_PORT," \
        "repository $REPO_ABS"
    if [[ "$mode" == "docker" ]]; then start_docker; else start_embedded; fi
    printf 'MODE=%s\nHTTP_PORT=%s\nGRPC_PORT=%s\nMETRICS_PORT=%s\n' \
        "$mode" "$HTTP_PORT" "$GRPC_PORT" "$METRICS_PORT" >"$STATE_FILE"
    SAVED_MODE="$mode" SAVED_HTTP_PORT="$HTTP_PORT"

    local deadline=$((SECONDS + TIMEOUT))
    until is_ready "$HTTP_PORT"; do
        if ! running; then
            echo "ERROR: Triton exited before it was ready" >&2
            print_log_tail "$mode"
            rm -f "$PID_FILE" "$STATE_FILE"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "ERROR: Triton not ready after ${TIMEOUT}s; stopping it" >&2
            print_log_tail "$mode"
            do_stop >/dev/null || true
            exit 1
        fi
        sleep 0.5
    done
    echo "Triton ready: http://127.0.0.1:$HTTP_PORT grpc://127.0.0.1:$GRPC_PORT (log: $(
        [[ "$mode" == docker ]] && echo "docker logs $CONTAINER" || echo "$LOG_FILE"))"
}

do_stop() {
    if [[ "$SAVED_MODE" == "docker" ]]; then
        if container_running; then docker stop -t 40 "$CONTAINER" >/dev/null; fi
        docker rm "$CONTAINER" >/dev/null 2>&1 || true
        echo "Triton stopped (container $CONTAINER)"
    else
        local pid
        if pid="$(embedded_pid)"; then
            kill -TERM "$pid"
            # The CLI forwards SIGTERM and kills the server itself after 30 s; give it a little more.
            local deadline=$((SECONDS + 45))
            while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
            if kill -0 "$pid" 2>/dev/null; then
                echo "Triton (pid $pid) ignored SIGTERM; killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
            echo "Triton stopped (pid $pid)"
        else
            echo "Triton not running"
        fi
    fi
    rm -f "$PID_FILE" "$STATE_FILE"
}

print_supervision() {
    if [[ "$SAVED_MODE" == "docker" ]]; then
        docker inspect -f 'container: restarts: {{.RestartCount}}{{if .State.Health}}, health: {{.State.Health.Status}} ({{len .State.Health.Log}} checks logged){{end}}' \
            "$CONTAINER" 2>/dev/null || true
    elif [[ -f "$SUPERVISOR_FILE" ]]; then
        "$PYTHON" -m serving.supervisor "$SUPERVISOR_FILE" || true
    fi
}

do_status() {
    if ! running; then
        echo "Triton not running"
        return 3
    fi
    local rc=1
    if is_ready "${HTTP_PORT:-${SAVED_HTTP_PORT:-8000}}"; then
        echo "Triton ready ($SAVED_MODE mode) at http://127.0.0.1:${HTTP_PORT:-${SAVED_HTTP_PORT:-8000}}"
        rc=0
    else
        echo "Triton running ($SAVED_MODE mode) but not ready"
    fi
    print_supervision
    return $rc
}

case "$COMMAND" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    restart) do_stop; SAVED_MODE="" SAVED_HTTP_PORT=""; do_start ;;
esac
