"""Uploads of the dubbing API made ready for the model by ingest's own stage code, and the
dubbed speech made ready for the caller.

A `video` upload is probed (ffprobe, with a timeout), checked against the service's limits and
decoded as ingest decodes a movie clip: mono audio at the model's rate, 25 fps frames at the
faces stage's size, then lip and face crops of the speaking face from the same `FaceTracker`.
A `reference` upload is any audio ffmpeg reads, or a video's audio track. The clip's dialogue
and background come from ingest's `Separator` when one is configured. The dubbed speech goes
back as a WAV, or mixed on the clip's background and muxed with the clip's own video stream
copied bit for bit.

Every refusal is an `InputError`: an HTTP status, the request field, and a sentence for the
caller that holds no server path and no stack trace.

ffmpeg children started here run under `prlimit` (address space, CPU seconds): a `preexec_fn`
calling setrlimit can deadlock the forked child of a threaded process such as a Serve replica.
Probe and decode run through ingest's `run_tool`, which has no hook for limits, so those
children are bounded by their timeouts only.

Shape key: n = audio samples at the model's rate, f = video frames at FPS, g = face frames at
face_fps, s = face_size, l = lip_size.
"""

from __future__ import annotations

import io
import math
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy.ndimage import minimum_filter1d, uniform_filter1d

from dubforge.ingest.config import FacesSection, SeparatorSection, TimeoutSection
from dubforge.ingest.decode import decode_audio, decode_video
from dubforge.ingest.energy import rms_db
from dubforge.ingest.probe import MediaError, MediaInfo, ProbeLimits, probe, run_tool, verify_decode
from dubforge.schema import FPS

TOO_LARGE, NOT_MEDIA, OUT_OF_RANGE = 413, 415, 422

# container -> the demuxer ffprobe names for it; mp4 and mov share one, as do mkv and webm
CONTAINER_FORMATS = {
    "mp4": "mov,mp4,m4a,3gp,3g2,mj2",
    "mov": "mov,mp4,m4a,3gp,3g2,mj2",
    "mkv": "matroska,webm",
    "webm": "matroska,webm",
}
# video codecs the mp4 muxer takes by stream copy (VP8 and Theora it refuses)
MP4_VIDEO_CODECS = ("h264", "hevc", "vp9", "av1", "mpeg4")
PEAK_CEILING = 0.98  # mixed output peaks stay below this (-0.18 dBFS): AAC overshoots a little
LIMITER_SECONDS = 0.005  # the limiter's gain reaches a peak this far ahead and recovers as fast
AAC_BITRATE = "128k"

# what the caller is told for each ingest rejection reason of an upload
_MEDIA_DETAIL = {
    "empty_file": "is empty",
    "not_media": "is not audio or video that ffmpeg can read",
    "timeout": "took too long to read",
    "truncated": "ends before the duration it declares (was the upload cut short?)",
    "decode_error": "could not be decoded",
}


class InputError(ValueError):
    """An upload the API refuses: `status` 413 (too large), 415 (not usable media) or 422 (a
    value out of range); `field` is the request field; `detail` a sentence for the caller."""

    def __init__(self, status: int, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.status = status
        self.field = field
        self.detail = detail


class InputSection(BaseModel):
    """Limits on the dubbing API's uploads, and the ingest settings that prepare them (faces,
    separator and timeouts are ingest's own sections, so both read them the same way)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_clip_seconds: float = Field(30.0, gt=0, description="longer video uploads get 422")
    max_video_bytes: int = Field(256 * 2**20, ge=1, description="larger video uploads get 413")
    max_reference_seconds: float = Field(30.0, gt=0, description="longer references get 422")
    min_reference_seconds: float = Field(0.5, gt=0, description="shorter references get 422")
    min_reference_db: float = Field(
        -50.0, le=0, description="references quieter than this RMS level (dBFS) are silent: 422"
    )
    max_reference_bytes: int = Field(64 * 2**20, ge=1, description="larger references get 413")
    max_side: int = Field(4096, ge=32, description="video with a longer side (px) gets 422")
    containers: tuple[str, ...] = Field(
        ("mp4", "mov", "mkv", "webm"), description=f"accepted, by probe: {list(CONTAINER_FORMATS)}"
    )
    video_codecs: tuple[str, ...] = Field(
        ("h264", "hevc", "vp9", "av1"), description=f"accepted, from {list(MP4_VIDEO_CODECS)}"
    )
    tool_threads: int = Field(2, ge=1, description="threads of one ffmpeg mux")
    tool_memory_mb: int | None = Field(
        2048, ge=256, description="address space of ffmpeg children (prlimit); None: unlimited"
    )
    faces: FacesSection = FacesSection()
    separator: SeparatorSection = SeparatorSection()
    timeouts: TimeoutSection = TimeoutSection()

    @field_validator("containers")
    @classmethod
    def _known_containers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in v if c not in CONTAINER_FORMATS]
        if unknown or not v:
            raise ValueError(f"containers {list(v)}: choose from {list(CONTAINER_FORMATS)}")
        return v

    @field_validator("video_codecs")
    @classmethod
    def _copyable_codecs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in v if c not in MP4_VIDEO_CODECS]
        if unknown or not v:
            raise ValueError(
                f"video_codecs {list(v)}: the mp4 output copies only {list(MP4_VIDEO_CODECS)}"
            )
        return v

    @model_validator(mode="after")
    def _reference_range(self) -> InputSection:
        if self.min_reference_seconds >= self.max_reference_seconds:
            raise ValueError(
                f"min_reference_seconds={self.min_reference_seconds} must be below "
                f"max_reference_seconds={self.max_reference_seconds}"
            )
        return self


@dataclass(frozen=True, eq=False)
class PreparedClip:
    """A validated video upload, decoded and cropped as ingest would for a movie clip."""

    path: Path  # the validated upload, muxed from as it is
    duration: float  # seconds, as probed
    frames: int  # video frames at FPS: round(duration * FPS)
    lips: np.ndarray | None  # uint8 [f, l, l]; None when the face is seen in too few frames
    face: np.ndarray | None  # uint8 [g, s, s, 3] at face_fps; None with lips
    face_fps: float  # face crops per second
    face_coverage: float  # fraction of frames in which the speaking face was found
    n_faces: int  # face tracks seen
    audio: np.ndarray  # float32 [n] mono, the clip's own mix; zeros without an audio stream
    sample_rate: int
    has_audio: bool
    container: str  # ffprobe's demuxer name, e.g. "matroska,webm"
    video_codec: str
    audio_codec: str  # "" without an audio stream
    width: int
    height: int


@dataclass(frozen=True, eq=False)
class Stems:
    """A clip's audio as dialogue and background (music and effects), float32 [n] each.

    `separated` is False when no separator is configured: dialogue is then the whole mix and
    background silence, which the API reports to its caller.
    """

    dialogue: np.ndarray
    background: np.ndarray
    separated: bool


@contextmanager
def _as_input_error(field: str) -> Iterator[None]:
    """Ingest's MediaError on an upload becomes a 415 for `field`; a reason that is the
    server's fault (missing_file) passes through."""
    try:
        yield
    except MediaError as e:
        if e.reason not in _MEDIA_DETAIL:
            raise
        raise InputError(NOT_MEDIA, field, f"the {field} {_MEDIA_DETAIL[e.reason]}") from e


def _require_prlimit() -> None:
    if shutil.which("prlimit") is None:
        raise RuntimeError(
            "prlimit (util-linux) is not installed: install it, or set tool_memory_mb: null to "
            "run ffmpeg without limits"
        )


def _limited(cmd: list[str], memory_mb: int | None, cpu_seconds: float) -> list[str]:
    """`cmd` run under prlimit: address space `memory_mb`, CPU time `cpu_seconds`."""
    if memory_mb is None:
        return cmd
    _require_prlimit()
    cpu = max(1, math.ceil(cpu_seconds))
    return ["prlimit", f"--as={memory_mb * 2**20}", f"--cpu={cpu}", "--", *cmd]


def _check_size(path: Path, field: str, max_bytes: int) -> None:
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(
            TOO_LARGE,
            field,
            f"the {field} is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB",
        )


def video_end(path: Path, limits: ProbeLimits, memory_mb: int | None) -> float:
    """Seconds of video packets actually in the file (last packet's end minus the first's
    start), read without decoding. A truncated fast-start file keeps the duration of its index,
    so this is what shows truncation when there is no audio for `verify_decode`."""
    cmd = [
        "ffprobe", "-v", "error", "-select_streams", "v:0",
        "-show_entries", "packet=pts_time,duration_time", "-of", "csv=p=0", str(path),
    ]  # fmt: skip
    timeout = limits.probe_timeout
    out = run_tool(_limited(cmd, memory_mb, timeout), "reading video packets", timeout)
    if out.returncode != 0:
        raise MediaError("decode_error", "ffprobe could not read the video packets")
    starts, ends = [], []
    for line in out.stdout.decode("ascii", "replace").splitlines():
        pts, _, dur = line.strip().strip(",").partition(",")
        try:
            starts.append(float(pts))
            ends.append(float(pts) + (float(dur) if dur and dur != "N/A" else 0.0))
        except ValueError:
            continue  # a packet without a timestamp
    return max(ends) - min(starts) if starts else 0.0


class ClipPreparer:
    """Turns uploads into model inputs; one per replica (it loads the face models, and the
    separator when one is configured, once). Thread-safe: the models, which keep state between
    calls, are used under locks."""

    def __init__(self, cfg: InputSection, sample_rate: int) -> None:
        """cfg: the API's input settings; sample_rate: the model's audio rate (Hz), at which
        clips are decoded."""
        from dubforge.ingest.faces import FaceTracker  # heavy import, only where one is built

        if cfg.tool_memory_mb is not None:
            _require_prlimit()
        if sample_rate <= 0:
            raise ValueError(f"sample_rate={sample_rate}; pass the model's audio rate in Hz")
        self.cfg, self.sample_rate = cfg, sample_rate
        t = cfg.timeouts
        self.limits = ProbeLimits(
            probe_timeout=t.probe, decode_timeout=t.decode, decode_per_second=t.decode_per_second
        )
        self._formats = {CONTAINER_FORMATS[c] for c in cfg.containers}
        self._tracker = None
        if cfg.faces.enabled:
            f = cfg.faces
            self._tracker = FaceTracker(face_size=f.face_size, lip_size=f.lip_size)
        self._separator = None
        if cfg.separator.model_dir:
            from dubforge.ingest.separate import Separator

            s = cfg.separator
            self._separator = Separator(s.model_dir, s.model_filename, use_gpu=s.num_gpus > 0)
        self._tracker_lock = threading.Lock()
        self._separator_lock = threading.Lock()

    @property
    def separates(self) -> bool:
        """Whether a separator is configured (else background is silence)."""
        return self._separator is not None

    def close(self) -> None:
        """Release the face models and the separator's temp folder."""
        if self._tracker is not None:
            self._tracker.close()
        if self._separator is not None:
            self._separator.close()

    def _probe(self, path: Path, field: str, max_bytes: int) -> MediaInfo:
        _check_size(path, field, max_bytes)
        with _as_input_error(field):
            return probe(path, timeout=self.limits.probe_timeout)

    def _check_video(self, info: MediaInfo) -> None:
        """Refuse what the API cannot dub: the order goes from 'not a video' to 'too long'."""
        if not info.has_video:
            raise InputError(NOT_MEDIA, "video", "the video has no video stream")
        if info.format not in self._formats:
            raise InputError(
                NOT_MEDIA,
                "video",
                f"the video's container ({info.format}) is not accepted; send one of "
                f"{', '.join(self.cfg.containers)}",
            )
        if info.video_codec not in self.cfg.video_codecs:
            raise InputError(
                NOT_MEDIA,
                "video",
                f"the video codec {info.video_codec or 'unknown'} is not accepted; send one of "
                f"{', '.join(self.cfg.video_codecs)}",
            )
        if info.width <= 0 or info.height <= 0:
            raise InputError(NOT_MEDIA, "video", "the video stream has no picture size")
        if max(info.width, info.height) > self.cfg.max_side:
            raise InputError(
                OUT_OF_RANGE,
                "video",
                f"the video is {info.width}x{info.height}; the longer side may be at most "
                f"{self.cfg.max_side} px",
            )
        if info.duration * FPS < 1:
            raise InputError(OUT_OF_RANGE, "video", "the video has no duration")
        if info.duration > self.cfg.max_clip_seconds:
            raise InputError(
                OUT_OF_RANGE,
                "video",
                f"the video is {info.duration:.1f} s long; the limit is "
                f"{self.cfg.max_clip_seconds:g} s",
            )

    def _check_complete(self, path: Path, info: MediaInfo) -> None:
        """MediaError("truncated") when the file holds less than its probed duration."""
        if info.has_audio:
            verify_decode(path, info, self.limits)
            return
        seen = video_end(path, self.limits, self.cfg.tool_memory_mb)
        if seen < info.duration - self.limits.decode_tolerance:
            raise MediaError("truncated", f"{seen:.2f} s of video of {info.duration:.2f} s probed")

    def prepare(self, path: str | Path) -> PreparedClip:
        """Validate and decode a video upload: audio mono float32 at the model's rate, lips
        and face of the speaking face as ingest's faces stage makes them.

        The face tracker picks the speaker by the clip's mixed audio (ingest gives it the
        separated speech; a background rarely moves with one face's mouth). Raises InputError.
        """
        path, sample_rate = Path(path), self.sample_rate
        info = self._probe(path, "video", self.cfg.max_video_bytes)
        self._check_video(info)
        dur, timeout = info.duration, self.cfg.timeouts.decode
        with _as_input_error("video"):
            self._check_complete(path, info)
            if info.has_audio:
                audio = decode_audio(path, 0.0, dur, sample_rate, timeout=timeout)  # [n]
            else:
                audio = np.zeros(int(round(dur * sample_rate)), np.float32)
        lips, face, face_fps, coverage, n_faces = self._faces(path, info, audio)
        return PreparedClip(
            path=path,
            duration=dur,
            frames=int(round(dur * FPS)),
            lips=lips,
            face=face,
            face_fps=face_fps,
            face_coverage=coverage,
            n_faces=n_faces,
            audio=audio,
            sample_rate=sample_rate,
            has_audio=info.has_audio,
            container=info.format,
            video_codec=info.video_codec,
            audio_codec=info.audio_codec,
            width=info.width,
            height=info.height,
        )

    def _faces(
        self, path: Path, info: MediaInfo, audio: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray | None, float, float, int]:
        """(lips [f, l, l], face [g, s, s, 3], face_fps, coverage, n_faces) from 25 fps frames
        at the faces stage's size, the arrays None below faces.min_coverage, as ingest's faces
        stage keeps them; with faces disabled nothing is decoded."""
        step = FPS // self.cfg.faces.face_fps
        if self._tracker is None:
            return None, None, FPS / step, 0.0, 0
        with _as_input_error("video"):
            frames = decode_video(
                path, 0.0, info.duration, info.width, info.height, self.cfg.faces.max_side,
                timeout=self.cfg.timeouts.decode,
            )  # fmt: skip
        with self._tracker_lock:
            track = self._tracker.track(frames, audio, self.sample_rate)  # frames: [f, h, w, 3]
        coverage = round(float(track.coverage), 3)
        if track.coverage < self.cfg.faces.min_coverage:
            return None, None, FPS / step, coverage, int(track.n_faces)
        return track.lips, track.face[::step], FPS / step, coverage, int(track.n_faces)

    def reference(self, path: str | Path, sample_rate: int) -> np.ndarray:
        """A reference voice upload as mono float32 [n] at `sample_rate`: any audio ffmpeg
        reads, or a video's first audio track. Raises InputError (415 not media or no audio;
        422 too short, too long or silent; 413 too large)."""
        path, cfg = Path(path), self.cfg
        info = self._probe(path, "reference", cfg.max_reference_bytes)
        if not info.has_audio:
            raise InputError(NOT_MEDIA, "reference", "the reference has no audio stream")
        if info.duration > cfg.max_reference_seconds:
            raise InputError(
                OUT_OF_RANGE,
                "reference",
                f"the reference is {info.duration:.1f} s long; the limit is "
                f"{cfg.max_reference_seconds:g} s",
            )
        if info.duration < cfg.min_reference_seconds:
            raise InputError(
                OUT_OF_RANGE,
                "reference",
                f"the reference is {info.duration:.2f} s long; send at least "
                f"{cfg.min_reference_seconds:g} s of speech",
            )
        with _as_input_error("reference"):
            verify_decode(path, info, self.limits)
            wave = decode_audio(path, 0.0, info.duration, sample_rate, timeout=cfg.timeouts.decode)
        level = rms_db(wave)
        if level < cfg.min_reference_db:
            raise InputError(
                OUT_OF_RANGE,
                "reference",
                f"the reference is silent ({level:.0f} dBFS); send a recording of the voice",
            )
        return wave

    def dialogue_and_background(self, clip: PreparedClip) -> Stems:
        """The clip's audio split by ingest's Separator; without one (or without an audio
        stream) no model runs, and without one the result says so (`separated` False)."""
        silence = np.zeros_like(clip.audio)
        if self._separator is None:
            return Stems(clip.audio, silence, separated=False)
        if not clip.has_audio:
            return Stems(silence, silence.copy(), separated=True)
        with self._separator_lock:
            dialogue, background = self._separator.separate(clip.audio, clip.sample_rate)
        return Stems(dialogue, background, separated=True)

    def mux(
        self, clip: PreparedClip, speech: np.ndarray, background: np.ndarray, out_path: str | Path
    ) -> Path:
        """`mux_mp4` of the clip's upload with this replica's timeouts and limits."""
        cfg = self.cfg
        return mux_mp4(
            clip.path,
            speech,
            background,
            clip.sample_rate,
            out_path,
            timeout=cfg.timeouts.decode + cfg.timeouts.decode_per_second * clip.duration,
            threads=cfg.tool_threads,
            memory_mb=cfg.tool_memory_mb,
        )


def encode_wav(wave: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM mono WAV of wave [n], clipped to [-1, 1] (NaN as 0)."""
    x = np.asarray(wave, np.float32)
    if x.ndim != 1:
        raise ValueError(f"wave has shape {x.shape}; pass mono audio [n]")
    x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, x, int(sample_rate), subtype="PCM_16", format="WAV")
    return buf.getvalue()


def limit_peaks(wave: np.ndarray, sample_rate: int, ceiling: float = PEAK_CEILING) -> np.ndarray:
    """wave [n] with its gain lowered around every sample above `ceiling`, float32 [n].

    The gain each sample needs is min-filtered over +-LIMITER_SECONDS, then averaged over the
    same span: every sample averaged at a peak has the peak in its min window, so the gain
    there is at most what the peak needs, and it ramps in and out instead of stepping (a step
    would click). Quiet passages keep gain 1."""
    x = np.asarray(wave, np.float32)
    need = np.minimum(1.0, ceiling / np.maximum(np.abs(x), 1e-9))  # [n]
    if need.size == 0 or need.min() >= 1.0:
        return x.copy()
    size = 2 * max(1, int(LIMITER_SECONDS * sample_rate)) + 1
    gain = uniform_filter1d(minimum_filter1d(need, size, mode="nearest"), size, mode="nearest")
    return np.clip(x * gain, -ceiling, ceiling).astype(np.float32)  # clip: float rounding only


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


def mux_mp4(
    video_path: str | Path,
    speech: np.ndarray,
    background: np.ndarray,
    sample_rate: int,
    out_path: str | Path,
    *,
    timeout: float,
    threads: int,
    memory_mb: int | None,
) -> Path:
    """An mp4 of the clip's first video stream, copied as it is, with speech [n'] mixed on
    background [n] (speech trimmed or padded to n, the sum peak-limited) as mono AAC; its
    duration is n / sample_rate, the clip's. The mix goes through a WAV beside `out_path`
    (deleted after). Raises MediaError ("timeout" or "mux_error") when ffmpeg fails."""
    video_path, out_path = Path(video_path), Path(out_path)
    background = np.asarray(background, np.float32)
    if background.ndim != 1 or background.size == 0:
        raise ValueError(f"background has shape {background.shape}; pass the clip's mono M&E [n]")
    if out_path.resolve() == video_path.resolve():
        raise ValueError(f"out_path {out_path.name} is the video itself: write elsewhere")
    n = len(background)
    mix = np.nan_to_num(_fit(speech, n) + background, nan=0.0, posinf=1.0, neginf=-1.0)
    mix = limit_peaks(mix, sample_rate)  # [n]
    wav = out_path.with_name(f"{out_path.stem}.mix.wav")
    sf.write(wav, mix, int(sample_rate), subtype="FLOAT")
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-y", "-threads", str(threads),
        "-i", str(video_path), "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0",
        "-c:v", "copy", "-c:a", "aac", "-b:a", AAC_BITRATE, "-ac", "1",
        "-t", f"{n / sample_rate:.6f}", "-threads", str(threads),
        "-movflags", "+faststart", "-f", "mp4", str(out_path),
    ]  # fmt: skip
    try:
        out = run_tool(_limited(cmd, memory_mb, timeout * threads), "muxing the clip", timeout)
    finally:
        wav.unlink(missing_ok=True)
    if out.returncode != 0:
        lines = out.stderr.decode("utf-8", "replace").strip().splitlines() or [""]
        tail = lines[-1][-300:]
        for p in (video_path, wav, out_path):  # the caller sees file names, not server paths
            tail = tail.replace(str(p), p.name)
        raise MediaError("mux_error", f"ffmpeg could not write the mp4 ({tail})")
    return out_path
