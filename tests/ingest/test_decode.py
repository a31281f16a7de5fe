"""Clip decoding seeks to the span and returns exact lengths."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from dubforge.ingest.decode import decode_audio, decode_video
from dubforge.ingest.probe import MediaError


@pytest.fixture(scope="module")
def stepped(tmp_path_factory):
    """8 s: the tone steps up 100 Hz each second (300, 400, ...), so a span's pitch tells where
    the decoder really started."""
    path = tmp_path_factory.mktemp("dec") / "steps.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=8",
         "-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*(300+100*floor(t))*t):s=48000:d=8",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "50",
         "-c:a", "aac", "-ac", "2", "-movflags", "+faststart", str(path)],
        check=True,
    )  # fmt: skip
    return path


def _pitch(wave: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spec) * sr / len(wave))


@pytest.mark.parametrize("start", [0.0, 3.0, 5.05])
def test_audio_seeks_to_the_span(stepped, start):
    wave = decode_audio(stepped, start + 0.1, 0.8, 24000)
    assert wave.dtype == np.float32 and wave.shape == (19200,)
    assert abs(_pitch(wave, 24000) - (300 + 100 * int(start))) < 5


def test_audio_length_is_exact_even_past_the_end(stepped):
    wave = decode_audio(stepped, 7.5, 1.0, 16000)
    assert wave.shape == (16000,)
    assert np.abs(wave[:7000]).max() > 0.1 and np.abs(wave[9000:]).max() == 0.0


def test_video_frames_at_25_fps_and_scaled(stepped):
    frames = decode_video(stepped, 2.0, 1.2, 640, 360)
    assert frames.shape == (30, 360, 640, 3) and frames.dtype == np.uint8
    small = decode_video(stepped, 2.0, 1.2, 640, 360, max_side=320)
    assert small.shape == (30, 180, 320, 3)
    assert frames.std() > 10  # real picture, not padding


def test_decode_errors_are_media_errors(tmp_path, stepped):
    with pytest.raises(MediaError) as err:
        decode_audio(tmp_path / "missing.mp4", 0, 1, 16000)
    assert err.value.reason == "missing_file"
    (tmp_path / "junk.mp4").write_bytes(b"not a movie" * 100)
    with pytest.raises(MediaError) as err:
        decode_audio(tmp_path / "junk.mp4", 0, 1, 16000)
    assert err.value.reason == "decode_error"
    with pytest.raises(MediaError):
        decode_video(stepped, 20.0, 1.0, 640, 360)  # past the end: no frames
