"""Ingest fixtures: small real media made with ffmpeg, including the broken kinds users send."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


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
