"""Ingest fixtures: small real media made with ffmpeg, including the broken kinds users send."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from dubforge.ingest.config import IngestConfig
from dubforge.synth.config import SynthConfig
from dubforge.synth.corpus import generate
from tests.ingest.codec_model import make_tiny_codec

# broken inputs in the end-to-end runs and the reason each must be rejected with
BROKEN = {
    "truncated.mp4": "truncated",
    "empty.mp4": "empty_file",
    "notmedia.mp4": "not_media",
    "noaudio.mp4": "no_audio",
    "tiny.mp4": "absurd_resolution",
}


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=120)


def make_movie(path: Path, seconds: float = 6.0, size: str = "320x240", audio: bool = True,
               video: bool = True) -> Path:  # fmt: skip
    """A fast-start h264/aac mp4 from ffmpeg's test sources."""
    args: list[str] = []
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=330:sample_rate=48000:duration={seconds}"]
    if video:
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", "aac", "-ac", "2"]
    _ffmpeg(*args, "-movflags", "+faststart", str(path))
    return path


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """good.mp4 and the broken inputs, each named after what is wrong with it."""
    d = tmp_path_factory.mktemp("media")
    make_movie(d / "good.mp4")
    full = make_movie(d / "full.mp4", seconds=12.0).read_bytes()
    (d / "truncated.mp4").write_bytes(full[: len(full) * 2 // 3])  # index says 12 s, data ends
    (d / "full.mp4").unlink()
    (d / "empty.mp4").write_bytes(b"")
    (d / "notmedia.mp4").write_text("this is a text file with a video extension\n" * 50)
    make_movie(d / "noaudio.mp4", audio=False)
    make_movie(d / "novideo.mp4", video=False)
    make_movie(d / "tiny.mp4", size="16x16")
    return d


@pytest.fixture(scope="session")
def ingest_inputs(tmp_path_factory, media_dir) -> tuple[Path, list[str], Path]:
    """(root, input roots, codec folder): two synthetic movies with true stems, four speech
    utterances, the broken files and a movie without subtitles."""
    root = tmp_path_factory.mktemp("ingest")
    generate(SynthConfig(output=str(root / "corpus"), movies=2, seed=11, duration=24.0,
                         scene_seconds=12.0, speech_utterances=4, speech_speakers=1))  # fmt: skip
    broken = root / "broken"
    broken.mkdir()
    for name in BROKEN:
        shutil.copy(media_dir / name, broken / name)
    shutil.copy(media_dir / "good.mp4", broken / "nosubs.mp4")  # tone only: no voice activity
    codec = make_tiny_codec(root / "codec", "encodec")
    roots = [str(root / "corpus" / "movies"), str(root / "corpus" / "speech"), str(broken)]
    return root, roots, codec


@pytest.fixture(scope="session")
def ingested(ingest_inputs) -> tuple[Path, IngestConfig, dict]:
    """One uninterrupted ingest run of `ingest_inputs` into <root>/out."""
    from dubforge.ingest.pipeline import run

    root, roots, codec = ingest_inputs
    cfg = IngestConfig(input=roots, output=str(root / "out"), codec={"name_or_path": str(codec)},
                       num_cpus=4)  # fmt: skip
    return root, cfg, run(cfg)
