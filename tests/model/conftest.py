"""Model fixtures: synthetic clip records in the ingest's format, a tiny saved EnCodec."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dubforge.schema import MEL_PROFILES, ClipRecord, CodecInfo, tasks_for_arrays
from tests.ingest.codec_model import make_tiny_codec

RecordFactory = Callable[..., tuple[dict, dict]]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared 2-core machine more threads oversubscribe it (measured:
    a tiny training step 65 ms with 1 thread, 0.7 s with 2 under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_record(
    key: str = "m/00000",
    seconds: float = 1.0,
    *,
    speech: bool = True,
    bg: bool = True,
    video: bool = True,
    face: bool = True,
    codes: int | None = None,
    text: str = "hello there",
    seed: int = 0,
    profile: str = "vocos_24k",
) -> tuple[dict, dict]:
    """(meta, arrays) as ingest writes them: mel in `profile` (vocos_24k: 100 bins, 93.75
    frames/s), lips at 25 fps, face at 5 fps; `codes` = codebook count to add EnCodec-like codes
    at 75 Hz (entries < 1024). `meta` is the record's JSON dict."""
    rng = np.random.default_rng(seed)
    mel = MEL_PROFILES[profile]
    t_mel, f = round(seconds * mel.frame_rate), round(seconds * 25)
    arrays: dict[str, np.ndarray] = {}
    if speech:
        arrays["speech.mel"] = rng.normal(-5, 2, (mel.n_mels, t_mel)).astype(np.float16)
    if bg:
        arrays["bg.mel"] = rng.normal(-7, 1, (mel.n_mels, t_mel)).astype(np.float16)
    if codes:
        t_codes = round(seconds * 75)
        if speech:
            arrays["speech.codes"] = rng.integers(0, 1024, (codes, t_codes)).astype(np.int16)
        if bg:
            arrays["bg.codes"] = rng.integers(0, 1024, (codes, t_codes)).astype(np.int16)
    if video:
        arrays["lips"] = rng.integers(0, 256, (f, 96, 96), dtype=np.uint8)
        if face:
            arrays["face"] = rng.integers(0, 256, (round(seconds * 5), 224, 224, 3), dtype=np.uint8)
    record = ClipRecord(
        key=key, movie_id=key.split("/")[0], split="train", source=f"synthetic:{key}",
        kind="movie" if video else "speech", start=0.0, end=seconds, text=text,
        transcribed=bool(text), codec=CodecInfo("encodec", 24000, 75.0, codes or 8, "none"),
        tasks=tasks_for_arrays(arrays), mel_profile=profile if speech or bg else None,
        labels={"scene_type": "dialogue", "gender": "female", "emotion": "sad"},
        speaker="a", face_coverage=1.0 if video else None,
        face_fps=5 if video and face else None,
    )  # fmt: skip
    return record.to_dict(), arrays


@pytest.fixture
def record() -> RecordFactory:
    return make_record


@pytest.fixture(scope="session")
def encodec_dir(tmp_path_factory) -> Path:
    """A tiny random EnCodec (24 kHz, 75 Hz, codebook width 16) saved with save_pretrained."""
    return make_tiny_codec(tmp_path_factory.mktemp("encodec") / "codec", "encodec")
