#!/usr/bin/env bash
# On an inf2 instance: check the software side (about a minute), compile SD 1.5 at 512x512
# (once), start the stack with one worker per NeuronCore pair, run N jobs, print per-image
# latency and images/s, stop everything.
#
#   pip install -e '.[neuron]' --extra-index-url https://pip.repos.neuron.amazonaws.com
#   scripts/inf2-smoke.sh [JOBS] [MODEL_ID]
#
# Uses DQ_REDIS_URL / DQ_S3_ENDPOINT_URL when set (else a local redis-server and SeaweedFS).
# DQ_SMOKE_SKIP_CHECK=1 skips the software check.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-40}
MODEL_ID=${2:-stable-diffusion-v1-5/stable-diffusion-v1-5}
NAME=${DQ_SMOKE_MODEL:-sd15-512}
PORT=${DQ_SMOKE_PORT:-8000}

# Before a ~40-minute compile: our neuron backend through optimum-neuron's real pipeline class on
# an emulated (CPU-traced) artifact, then the real Neuron SDK's imports. See docs/neuron.md.
if [ "${DQ_SMOKE_SKIP_CHECK:-0}" != 1 ]; then
  python scripts/inf2_smoke.py --check-software
fi

if [ ! -f "compiled/$NAME/model_index.json" ]; then
  dq compile "$MODEL_ID" --name "$NAME" --height 512 --width 512 \
    --batch-size 1 --num-images-per-prompt 1 --auto-cast matmul --auto-cast-type bf16
fi

export DQ_DEFAULT_MODEL="$NAME" DQ_BACKEND="${DQ_BACKEND:-neuron}"
dq up --api-port "$PORT" --workers 0 &   # --workers 0: the launcher detects NeuronCores
STACK=$!
trap 'kill -TERM $STACK 2>/dev/null; wait $STACK 2>/dev/null || true' EXIT

until curl -fs "http://127.0.0.1:$PORT/v1/models" | grep -q '"ready": *[1-9]'; do
  kill -0 $STACK 2>/dev/null || { echo "stack exited" >&2; exit 1; }
  sleep 2
done
curl -fs "http://127.0.0.1:$PORT/v1/workers"; echo
python scripts/inf2_smoke.py --api "http://127.0.0.1:$PORT" --model "$NAME" --jobs "$JOBS"
