#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: system packages, then .venv/ from the pinned constraints.
# DUBFORGE_DEVICE=cpu|cuda picks the torch/onnxruntime flavour (default: cuda when nvidia-smi works).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
DEVICE=${DUBFORGE_DEVICE:-$( (nvidia-smi -L >/dev/null 2>&1 && echo cuda) || echo cpu)}
APT_PACKAGES="ffmpeg espeak-ng libespeak-ng1 sox g++ ninja-build"

missing=()
for cmd in ffmpeg ffprobe espeak-ng sox g++ ninja; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
ldconfig -p 2>/dev/null | grep -q libespeak-ng.so || missing+=(libespeak-ng)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages (missing: ${missing[*]})"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PACKAGES >/dev/null
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=$(cat pyproject.toml requirements/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)-$DEVICE
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" = "$stamp" ] && [ -x .venv/bin/dubforge ]; then
  exit 0
fi

PIP=(.venv/bin/python -m pip install -qq --disable-pip-version-check -c requirements/constraints.txt)
echo "setup: installing Python packages into .venv ($DEVICE)"
# torch first and pinned: a package that asks for torch later then finds it satisfied instead of
# pulling the newest CUDA build (gigabytes of nvidia wheels).
"${PIP[@]}" "torch==2.13.0" "setuptools==80.10.2"
extra=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)
"${PIP[@]}" -e ".[dev,$extra]"
# MediaPipe's metadata pins numpy<2 and protobuf<5, which nothing else here can live with; its
# legacy face detection + face mesh (bundled models) run fine on numpy 2 / protobuf 6.
"${PIP[@]}" --no-deps "mediapipe==0.10.21"
# resemblyzer (SECS speaker encoder, weights inside the package) asks for the sdist-only webrtcvad
# and the `typing` backport; its real needs (webrtcvad-wheels, librosa, torch) are ours already.
"${PIP[@]}" --no-deps "resemblyzer==0.1.4"
# Vocos and BigVGAN model code for the mel space's vocoders (dubforge.model.vocoders). vocos asks
# for torchaudio, which has no build for torch 2.13, and encodec; bigvgan for training-only
# packages (auraloss, nnaudio, pesq, tensorboard). The parts we load need neither.
"${PIP[@]}" --no-deps "vocos==0.1.0" "bigvgan==2.4.1"
# audio-separator (through onnx2torch) pulls a CUDA-linked torchvision whose import fails against
# the CPU torch and breaks transformers' model imports; nothing of ours needs torchvision.
if [ "$DEVICE" = cpu ]; then
  .venv/bin/python -m pip uninstall -y -q torchvision 2>/dev/null || true
  if .venv/bin/python -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "setup: CUDA wheels (nvidia-*) got into a CPU venv; check requirements/constraints.txt" >&2
    exit 1
  fi
fi
echo "$stamp" > .venv/.setup-stamp
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
