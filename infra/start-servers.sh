#!/usr/bin/env bash
# Start the local Prefect server (schedules, flow-run UI) and the MLflow UI for this project.
#   infra/start-servers.sh            # both, in the background; logs in .prefect/*.log
#   infra/start-servers.sh stop
# Prefect: http://127.0.0.1:4200   MLflow: http://127.0.0.1:5000
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect} PREFECT_SERVER_ANALYTICS_ENABLED=false \
       MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
mkdir -p "$PREFECT_HOME"

if [[ "${1:-start}" == "stop" ]]; then
  for name in prefect mlflow; do
    [[ -f "$PREFECT_HOME/$name.pid" ]] && kill "$(cat "$PREFECT_HOME/$name.pid")" 2>/dev/null || true
    rm -f "$PREFECT_HOME/$name.pid"
  done
  exit 0
fi

# Create the MLflow store once before anything uses it concurrently.
"$VENV/bin/python" -c "from tutorloop.runtime import tracking; tracking.ensure_store()" >/dev/null

nohup "$VENV/bin/prefect" server start --host 127.0.0.1 --port 4200 >"$PREFECT_HOME/prefect.log" 2>&1 &
echo $! >"$PREFECT_HOME/prefect.pid"
nohup "$VENV/bin/mlflow" ui --backend-store-uri "sqlite:///$PWD/mlflow.db" \
  --default-artifact-root "$PWD/mlartifacts" --host 127.0.0.1 --port 5000 \
  >"$PREFECT_HOME/mlflow.log" 2>&1 &
echo $! >"$PREFECT_HOME/mlflow.pid"

for _ in $(seq 60); do
  curl -fs http://127.0.0.1:4200/api/health >/dev/null 2>&1 && break
  sleep 1
done
echo "Prefect: http://127.0.0.1:4200  (export PREFECT_API_URL=http://127.0.0.1:4200/api)"
echo "MLflow:  http://127.0.0.1:5000"
