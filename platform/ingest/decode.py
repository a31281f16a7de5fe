"""Decode one clip of a local media file: mono audio at the codec's rate, video at 25 fps.

Each call seeks (`-ss` before `-i`, so ffmpeg jumps to the nearest keyframe and decodes only
from there) and reads just the clip's span; a movie is never decoded whole per clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dubforge.ingest.probe import MediaError, run_tool
from dubforge.schema import FPS

# shape key: n = samples, f = video frames


def _run(cmd: list[str], what: str, timeout: float, path: str | Path) -> bytes:
    if not Path(path).exists():
        raise MediaError(
            "missing_file", f"{path} does not exist (moved or deleted during the run?)"
        )
    out = run_tool(cmd, f"decoding {what}", timeout)
    if out.returncode != 0:
        tail = out.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise MediaError("decode_error", f"{what}: {tail[0][-300:]}")
    return out.stdout


def decode_audio(
    path: str | Path,
    start: float,
    duration: float,
    sample_rate: int,
    stream: int = 0,
    timeout: float = 60.0,
) -> np.ndarray:
    """Audio of [start, start + duration) merged to mono (all channels averaged, as DualDub
    merges multi-channel audio before separation); float32 [round(duration * sample_rate)].
    ffmpeg gets `timeout` + `duration` seconds, then MediaError("timeout")."""
    n = int(round(duration * sample_rate))
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-ss", f"{start:.3f}", "-t", f"{duration:.3f}",
        "-i", str(path), "-map", f"0:a:{stream}", "-ac", "1", "-ar", str(sample_rate),
        "-f", "f32le", "-",
    ]  # fmt: skip
    wave = np.frombuffer(_run(cmd, f"audio of {path}", timeout + duration, path), np.float32)
    # the decoder may return a few samples more or less than asked; the span is the contract
    out = np.zeros(n, np.float32)
    out[: min(n, len(wave))] = wave[:n]
    return out


def decode_video(
    path: str | Path,
    start: float,
    duration: float,
    width: int,
    height: int,
    max_side: int = 0,
    timeout: float = 60.0,
) -> np.ndarray:
    """Frames of [start, start + duration) resampled to 25 fps, RGB uint8 [f, h, w, 3] with
    f = round(duration * 25). With `max_side`, frames are scaled down (aspect kept, even sides)
    so their longer side is at most that: face detection needs no 4K."""
    w, h = width, height
    vf = f"fps={FPS}"
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
        w, h = int(w * s) // 2 * 2, int(h * s) // 2 * 2
        vf += f",scale={w}:{h}:flags=area"
    f = int(round(duration * FPS))
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-ss", f"{start:.3f}", "-t", f"{duration:.3f}",
        "-i", str(path), "-map", "0:v:0", "-vf", vf, "-pix_fmt", "rgb24", "-f", "rawvideo", "-",
    ]  # fmt: skip
    raw = _run(cmd, f"video of {path}", timeout + 4 * duration, path)
    frames = np.frombuffer(raw, np.uint8)
    got = len(frames) // (w * h * 3)
    frames = frames[: got * w * h * 3].reshape(got, h, w, 3)
    if got == 0:
        raise MediaError(
            "decode_error", f"no video frames in {start:.2f}+{duration:.2f} s of {path}"
        )
    if got < f:  # repeat the last frame over a short tail rather than drop the clip
        frames = np.concatenate([frames, np.repeat(frames[-1:], f - got, axis=0)])
    return frames[:f]
