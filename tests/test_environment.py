"""The set-up's traps stay fixed: every required package imports and the CPU stack is CPU-only."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib import metadata

import pytest

REQUIRED = [
    "ray.data", "ray.train.torch", "ray.serve", "ray.tune", "deepspeed", "webdataset", "ffmpeg",
    "transformers", "audio_separator.separator", "mlflow", "pyarrow.fs", "onnxruntime", "cv2",
    "mediapipe", "silero_vad", "pyworld", "resemblyzer", "webrtcvad", "librosa", "safetensors",
]  # fmt: skip


@pytest.mark.parametrize("module", REQUIRED)
def test_required_module_imports(module):
    # in a fresh interpreter: import order and leftovers from other tests must not hide a failure
    out = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_transformers_codec_models_import():
    # a CUDA-linked torchvision next to the CPU torch breaks these imports (audio-separator pulls
    # one in; set-up removes it)
    from transformers import DacModel, EncodecConfig, EncodecModel, MimiModel  # noqa: F401

    assert EncodecConfig().sampling_rate == 24000


def test_cpu_stack_has_no_cuda_wheels():
    import torch

    if torch.version.cuda is not None:
        pytest.skip("CUDA build of torch: a GPU set-up")
    names = {d.metadata["Name"].lower() for d in metadata.distributions()}
    assert not {n for n in names if n.startswith("nvidia-")}
    assert "torchvision" not in names
    assert torch.__version__.startswith("2.13.0")


def test_opencv_has_haar_cascades():
    cv2 = importlib.import_module("cv2")
    assert cv2.__version__.startswith("4.")
    assert not cv2.CascadeClassifier(
        cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    ).empty()
