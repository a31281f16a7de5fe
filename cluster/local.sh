#!/usr/bin/env bash
# A single-node Ray cluster on this machine, started from the repo's venv with token auth.
#   cluster/local.sh up     start it (prints the variables a client needs)
#   cluster/local.sh down   stop it
# Then: RAY_ADDRESS=http://127.0.0.1:$RAY_DASHBOARD_PORT RAY_AUTH_MODE=token \
#       ray job submit --working-dir . -- jobs/synth_debug.yaml
# Settings from the environment: RAY_TEMP_DIR, RAY_PORT, RAY_DASHBOARD_PORT, RAY_NUM_CPUS,
# RAY_START_ARGS (more `ray start` flags). The token comes from RAY_AUTH_TOKEN,
# RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (generated there when none exists).
set -euo pipefail
cd "$(dirname "$0")/.."

TEMP_DIR=${RAY_TEMP_DIR:-/tmp/dubforge-ray}
PORT=${RAY_PORT:-6380}
DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8266}
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
# job entrypoints run with the PATH of `ray start`: put the venv first so `python` and
# `dubforge` in an entrypoint are the project's
export PATH="$PWD/.venv/bin:$PATH"

case "${1:-}" in
  up)
    [ -x .venv/bin/ray ] || bash scripts/setup.sh
    if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ] && [ ! -s ~/.ray/auth_token ]; then
      ray get-auth-token --generate >/dev/null
    fi
    mkdir -p "$TEMP_DIR"
    # a leftover pointer to a stopped cluster makes the next ray.init hang trying to join it
    rm -f "$TEMP_DIR/ray_current_cluster"
    # shellcheck disable=SC2086
    ray start --head --node-ip-address=127.0.0.1 --port="$PORT" \
      --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
      --temp-dir="$TEMP_DIR" --disable-usage-stats \
      ${RAY_NUM_CPUS:+--num-cpus=$RAY_NUM_CPUS} ${RAY_START_ARGS:-} >/dev/null
    echo "export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT RAY_AUTH_MODE=token"
    ;;
  down)
    ray stop --force >/dev/null 2>&1 || true
    rm -f "$TEMP_DIR/ray_current_cluster"
    ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
