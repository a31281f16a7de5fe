"""Probe media with ffprobe and check that it decodes as long as it claims.

A truncated fast-start mp4 keeps its full-length index at the front: ffprobe reports the whole
duration and a plain decode stops early with exit code 0. So `verify_decode` decodes the audio
with `-xerror` and compares the decoded length with the probed duration.
"""

from __future__ import annotations

import json
import stat
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from dubforge.ingest.records import Rejection

# demuxers that accept files that are no audio or video: text (as ANSI art) and still images
_NOT_MEDIA_FORMATS = frozenset(
    "tty image2 png_pipe jpeg_pipe bmp_pipe gif_pipe webp_pipe svg_pipe tiff_pipe".split()
)


class MediaError(Rejection):
    """Media that cannot be used (probe, checks or decoding)."""


@dataclass(frozen=True)
class MediaInfo:
    duration: float
    format: str
    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    video_codec: str = ""
    sample_rate: int = 0
    channels: int = 0
    audio_codec: str = ""


@dataclass(frozen=True)
class ProbeLimits:
    """What counts as usable media; the defaults suit film and TV."""

    min_side: int = 32
    max_side: int = 8192
    max_aspect: float = 5.0
    min_duration: float = 0.5
    decode_tolerance: float = 0.25  # seconds the decoded audio may fall short of the probe
    probe_timeout: float = 30.0  # seconds for ffprobe; a hung input (FIFO, stalled mount) ends
    decode_timeout: float = 60.0  # seconds for a full decode, plus decode_per_second x duration
    decode_per_second: float = 1.0


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][-300:] if lines else ""


def run_tool(cmd: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ffmpeg/ffprobe with a time limit; past it the process is killed (not left blocked
    on a FIFO or a stalled mount) and MediaError("timeout") is raised."""
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise MediaError("timeout", f"{what} took over {timeout:g} s (hung input?)") from None


def probe(path: str | Path, timeout: float = 30.0) -> MediaInfo:
    """ffprobe a local file; raises MediaError("empty_file" | "not_media" | "missing_file" |
    "timeout")."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise MediaError(
            "missing_file", f"{p}: {e.strerror} (moved or deleted during the run?)"
        ) from None
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise MediaError("empty_file", f"{p} has zero bytes")
    cmd = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams"]
    out = run_tool([*cmd, str(p)], f"ffprobe of {p.name}", timeout)
    if out.returncode != 0:
        raise MediaError("not_media", _last_line(out.stderr.decode("utf-8", "replace")))
    try:
        info = json.loads(out.stdout)
    except ValueError:
        raise MediaError("not_media", "ffprobe printed no readable description") from None
    if info.get("format", {}).get("format_name", "") in _NOT_MEDIA_FORMATS:
        raise MediaError("not_media", f"ffprobe reads it as {info['format']['format_name']!r}")
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video" and not _is_cover(s)), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    fmt = info.get("format", {})
    duration = float(fmt.get("duration") or 0.0)
    if duration <= 0:
        duration = max(float(s.get("duration") or 0.0) for s in streams) if streams else 0.0
    return MediaInfo(
        duration=duration,
        format=fmt.get("format_name", ""),
        has_video=video is not None,
        has_audio=audio is not None,
        width=int(video.get("width", 0)) if video else 0,
        height=int(video.get("height", 0)) if video else 0,
        fps=_rate(video.get("avg_frame_rate") or video.get("r_frame_rate")) if video else 0.0,
        video_codec=video.get("codec_name", "") if video else "",
        sample_rate=int(audio.get("sample_rate", 0)) if audio else 0,
        channels=int(audio.get("channels", 0)) if audio else 0,
        audio_codec=audio.get("codec_name", "") if audio else "",
    )


def _is_cover(stream: dict) -> bool:
    return bool(stream.get("disposition", {}).get("attached_pic"))


def _rate(text: str | None) -> float:
    try:
        return float(Fraction(text)) if text and text != "0/0" else 0.0
    except (ValueError, ZeroDivisionError):
        return 0.0


def check(info: MediaInfo, need_video: bool, limits: ProbeLimits) -> None:
    """Raise MediaError when probed media cannot serve as a training input."""
    if not info.has_audio:
        raise MediaError("no_audio", "no audio stream")
    if need_video and not info.has_video:
        raise MediaError("no_video", "no video stream")
    if info.duration < limits.min_duration:
        raise MediaError("too_short", f"{info.duration:.2f} s < {limits.min_duration} s")
    if need_video:
        lo, hi = sorted((info.width, info.height))
        if lo < limits.min_side or hi > limits.max_side or hi > limits.max_aspect * lo:
            raise MediaError(
                "absurd_resolution",
                f"{info.width}x{info.height} (sides {limits.min_side}-{limits.max_side}, "
                f"aspect <= {limits.max_aspect})",
            )
        if not 1.0 <= info.fps <= 240.0:
            raise MediaError("bad_frame_rate", f"{info.fps:.3f} fps")


def verify_decode(path: str | Path, info: MediaInfo, limits: ProbeLimits) -> float:
    """Decode the whole audio stream (8 kHz mono, cheap) with -xerror; returns the decoded
    seconds, raising MediaError("truncated" | "decode_error") when it falls short or fails."""
    rate = 8000
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-xerror", "-i", str(path), "-map", "0:a:0",
        "-ac", "1", "-ar", str(rate), "-f", "s16le", "-",
    ]  # fmt: skip
    timeout = limits.decode_timeout + limits.decode_per_second * info.duration
    out = run_tool(cmd, f"decoding {Path(path).name}", timeout)
    decoded = len(out.stdout) / 2 / rate
    if out.returncode != 0 and decoded < info.duration - limits.decode_tolerance:
        detail = _last_line(out.stderr.decode("utf-8", "replace"))
        raise MediaError(
            "truncated", f"decodes {decoded:.2f} s of {info.duration:.2f} s probed ({detail})"
        )
    if out.returncode != 0:
        raise MediaError("decode_error", _last_line(out.stderr.decode("utf-8", "replace")))
    if decoded < info.duration - limits.decode_tolerance:
        raise MediaError("truncated", f"decodes {decoded:.2f} s of {info.duration:.2f} s probed")
    return decoded
