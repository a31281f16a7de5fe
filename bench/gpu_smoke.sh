#!/usr/bin/env bash
# The GPU path end to end, in about 10 minutes on a machine with >= 1 NVIDIA GPU:
#   1. set-up: CUDA torch via scripts/setup.sh when the venv's torch has no CUDA (needs the package
#      index; skipped when CUDA torch is there). No DeepSpeed op needs building: the GPU config
#      uses torch's fused AdamW (train/engine.py); `dubforge doctor` shows the ops anyway.
#   2. the debug curriculum (tiny preset, synthetic learnable shards) with scaling.use_gpu=true,
#      NCCL, bf16 and ZeRO-2, then its first stage again with ZeRO-3; checks that every stage
#      succeeded with finite losses and that the exports hold fp32 masters (not bf16-rounded).
#   3. bench/train_mfu.py: base preset, bf16, frame-budget batches: samples/s, frames/s, MFU.
#   4. bench/model_rtf.py --device cuda --dtype bf16 for the base preset at NFE 16.
#
#   bash bench/gpu_smoke.sh [OUT_DIR]        (default runs/gpu_smoke; MFU_STEPS=200 to change)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-runs/gpu_smoke}")
MFU_STEPS=${MFU_STEPS:-200}
PY=.venv/bin/python
mkdir -p "$OUT"
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export RAY_TMPDIR=${RAY_TMPDIR:-$(mktemp -d /tmp/ray-smoke.XXXX)}
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%T)"; }

step "devices"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
GPUS=$(nvidia-smi -L | wc -l)
WORKERS=$((GPUS < 2 ? GPUS : 2))

step "set-up"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "the venv's torch has no CUDA: installing the CUDA build"
  DUBFORGE_DEVICE=cuda bash scripts/setup.sh
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
  "bf16", torch.cuda.is_bf16_supported(), "nccl", torch.cuda.nccl.version())'
.venv/bin/dubforge doctor --json 2>/dev/null | "$PY" -c \
  'import json, sys; r = json.load(sys.stdin); print("deepspeed ops:", r["deepspeed_ops"])'

step "synthetic shards"
"$PY" -c "from pathlib import Path; from tests.train.corpus import make_shards; \
make_shards(Path('$OUT/shards'), movies=16, speech=16)"

curriculum() {  # name, then overrides
  local name=$1
  shift
  timeout 420 .venv/bin/dubforge train jobs/curriculum_debug.yaml name="$name" \
    shards="$OUT/shards" storage="$OUT/train" scaling.use_gpu=true scaling.workers="$WORKERS" \
    scaling.cpus_per_worker=1 deepspeed.precision=bf16 tracking.register_as=null "$@"
}

check() {  # name, stages: finite losses, fp32 exports that bf16 cannot represent exactly
  "$PY" - "$OUT/train/$1" "${@:2}" <<'EOF'
import json, math, sys
from pathlib import Path
import torch
from dubforge.model.checkpoint import load_state

root, stages = Path(sys.argv[1]), sys.argv[2:]
summary = {s["stage"]: s for s in json.loads((root / "summary.json").read_text())["stages"]}
for name in stages:
    loss = summary[name]["metrics"]["train/loss"]
    assert math.isfinite(loss), f"{name}: train/loss {loss}"
    state = load_state(root / "exports" / name)
    floats = [t for t in state.values() if t.is_floating_point()]
    assert all(t.dtype == torch.float32 for t in floats), f"{name}: export not fp32"
    off_grid = sum(int((t != t.bfloat16().float()).sum()) for t in floats)
    assert off_grid > 0, f"{name}: every exported weight is bf16-rounded (masters lost)"
    print(f"  {name}: loss {loss:.4f}, {off_grid} exported values off the bf16 grid: ok")
EOF
}

step "debug curriculum: NCCL, bf16, ZeRO-2, $WORKERS workers"
curriculum gpu-z2 deepspeed.zero_stage=2
check gpu-z2 tts v2a v2a_tts v2st

step "debug curriculum, first stage: ZeRO-3"
curriculum gpu-z3 deepspeed.zero_stage=3 'run_stages=[tts]'
check gpu-z3 tts

step "train_mfu: base, bf16, $MFU_STEPS steps"
timeout 300 "$PY" bench/train_mfu.py --device cuda --preset base --dtype bf16 --steps "$MFU_STEPS"

step "model_rtf: base, bf16, NFE 16"
timeout 180 "$PY" bench/model_rtf.py --device cuda --dtype bf16 --preset base --nfe 16

step "done"
