#!/usr/bin/env bash
# The MLflow tracking server of a defer-sweep Ray cluster, run on the head node.
#
#   cluster/mlflow_server.sh start   # (re)start it in the background, wait until it answers
#   cluster/mlflow_server.sh stop    # stop the one this script started
#
# cluster/cluster.yaml calls `start` from head_start_ray_commands, so `ray up` (also a second
# `ray up` on a running cluster) leaves exactly one server running.
#
# It binds to the head's private IP only (the cluster's network; the security group keeps it
# off the internet) and accepts only the Host headers of that address and of localhost (an SSH
# tunnel), so a DNS-rebinding page in someone's browser cannot reach it. Runs and metrics go
# to SQLite on the head; artifacts are proxied by the server (--serve-artifacts) into a
# directory on the head or any object store URI (s3://bucket/prefix, gs://...).
#
# Settings (environment variables, all optional):
#   DEFER_SWEEP_MLFLOW_HOME       state directory                  (default ~/mlflow)
#   DEFER_SWEEP_MLFLOW_HOST       address to bind                  (default: first private IP)
#   DEFER_SWEEP_MLFLOW_PORT       port                             (default 5000)
#   DEFER_SWEEP_MLFLOW_BACKEND    backend store URI                (default sqlite:///$HOME_DIR/mlflow.db;
#                                                                   postgresql://... works too)
#   DEFER_SWEEP_MLFLOW_ARTIFACTS  artifact destination             (default $HOME_DIR/artifacts)
#   DEFER_SWEEP_MLFLOW_WORKERS    uvicorn worker processes         (default 2)
#
# On success it writes the tracking URI (http://HOST:PORT) to $HOME_DIR/tracking_uri.
set -euo pipefail

home_dir="${DEFER_SWEEP_MLFLOW_HOME:-$HOME/mlflow}"
port="${DEFER_SWEEP_MLFLOW_PORT:-5000}"
pid_file="$home_dir/server.pid"

private_ip() {
    # The first address `hostname -I` lists is the primary interface's (on EC2/GCE: the VPC IP).
    hostname -I 2>/dev/null | awk '{print $1}'
}

stop_server() {
    [ -f "$pid_file" ] || return 0
    local pid
    pid="$(cat "$pid_file")"
    # The server was started with setsid, so its process group holds it and its workers.
    # (A pid file that outlived a reboot may name some other process now: check it is ours.)
    if kill -0 "$pid" 2>/dev/null && ps -o args= -p "$pid" | grep -q "mlflow server"; then
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file" "$home_dir/tracking_uri"
}

start_server() {
    local host backend artifacts workers uri allowed python
    host="${DEFER_SWEEP_MLFLOW_HOST:-$(private_ip)}"
    if [ -z "$host" ]; then
        echo "mlflow_server.sh: cannot find this node's private IP; set DEFER_SWEEP_MLFLOW_HOST" >&2
        exit 1
    fi
    backend="${DEFER_SWEEP_MLFLOW_BACKEND:-sqlite:///$home_dir/mlflow.db}"
    artifacts="${DEFER_SWEEP_MLFLOW_ARTIFACTS:-$home_dir/artifacts}"
    workers="${DEFER_SWEEP_MLFLOW_WORKERS:-2}"
    uri="http://$host:$port"
    # Nodes and the sweep driver use host:port; an SSH tunnel's browser sends localhost:<any port>.
    allowed="$host,$host:$port,localhost,localhost:*,127.0.0.1,127.0.0.1:*"
    if ! command -v mlflow >/dev/null; then
        echo "mlflow_server.sh: no mlflow on PATH (the project's venv, ~/venv/bin on a cluster node)" >&2
        exit 1
    fi
    python="$(dirname "$(command -v mlflow)")/python"

    # MLflow's background job runner (GenAI evaluation jobs, trace roll-ups) is not used by a
    # sweep and starts ~8 extra processes; set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true to keep it.
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

    mkdir -p "$home_dir"
    case "$artifacts" in *://*) ;; *) mkdir -p "$artifacts" ;; esac
    stop_server

    # A session of its own: it outlives the SSH command that started it, and its process group
    # (the server and its workers) is what `stop` signals. The pid is written from inside.
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pid_file" \
        mlflow server \
        --backend-store-uri "$backend" \
        --serve-artifacts --artifacts-destination "$artifacts" \
        --host "$host" --port "$port" \
        --allowed-hosts "$allowed" \
        --workers "$workers" \
        </dev/null >"$home_dir/server.log" 2>&1 &
    for _ in $(seq 1 50); do [ -s "$pid_file" ] && break; sleep 0.1; done

    # Wait until it answers (the first start creates the SQLite schema: several seconds).
    for _ in $(seq 1 240); do
        if "$python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$uri" 2>/dev/null; then
            echo "$uri" >"$home_dir/tracking_uri"
            echo "MLflow tracking server: $uri (log: $home_dir/server.log)"
            return 0
        fi
        if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
            echo "mlflow_server.sh: the server exited; its log:" >&2
            tail -n 30 "$home_dir/server.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "mlflow_server.sh: no answer from $uri after 120 s; see $home_dir/server.log" >&2
    exit 1
}

case "${1:-start}" in
    start) start_server ;;
    stop) stop_server ;;
    *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
