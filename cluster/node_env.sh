#!/usr/bin/env bash
# Environment of every process defer-sweep runs on a cluster node: `ray start` (and so the
# raylet and every Ray worker it spawns) and the sweep driver that `ray submit` starts on the
# head. cluster/cluster.yaml runs it in the head's and the workers' setup commands.
#
#   cluster/node_env.sh HEAD_PRIVATE_IP
#
# Writes ~/.defer-sweep.env and makes ~/.bashrc source it on its first line (before Ubuntu's
# "not interactive: return"), so plain `ssh node cmd` sees it as well as the cluster
# launcher's `bash --login -i` commands. Running it again rewrites the file (a new head IP
# after `ray down` / `ray up`) and leaves ~/.bashrc with a single source line.
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 HEAD_PRIVATE_IP" >&2
    exit 2
fi
head_ip="$1"
port="${DEFER_SWEEP_MLFLOW_PORT:-5000}"
env_file="$HOME/.defer-sweep.env"

cat >"$env_file" <<EOF
# Written by defer-sweep's cluster/node_env.sh; rewritten by every \`ray up\`.
export PATH="\$HOME/venv/bin:\$PATH"
# The MLflow tracking server on the head node (cluster/mlflow_server.sh). The sweep driver
# logs there; any process on any node can read the sweep from it.
export MLFLOW_TRACKING_URI="http://$head_ip:$port"
# Ray token authentication on every node and driver; the token is ~/.ray/auth_token
# (copied from the machine that ran \`ray up\`, see file_mounts in cluster/cluster.yaml).
export RAY_AUTH_MODE=token
# The edit records (ZsRE), copied by file_mounts; only the driver reads them.
export DEFER_SWEEP_DATA_DIR="\$HOME/shared/data"
EOF

line='[ -f "$HOME/.defer-sweep.env" ] && . "$HOME/.defer-sweep.env"'
touch "$HOME/.bashrc"
if ! grep -qxF "$line" "$HOME/.bashrc"; then
    tmp="$(mktemp "$HOME/.bashrc.XXXXXX")"
    { printf '%s\n' "$line"; cat "$HOME/.bashrc"; } >"$tmp"
    mv "$tmp" "$HOME/.bashrc"
fi
echo "defer-sweep node environment: $env_file (MLFLOW_TRACKING_URI=http://$head_ip:$port)"
