"""The clip record and the constants every stage shares: the one home of the data contract.

Ingest builds a `ClipRecord` per clip and validates it (with its arrays) before writing; train,
model, eval and serve read records only through `ClipRecord.from_dict`. This module imports
nothing of ours, so the import arrows run one way: schema at the bottom, ingest and model beside
each other above it.

Shape key of the arrays: q = codebooks, t = codec frames, m = mel bins, n = mel frames,
f = video frames at FPS, g = face frames at `face_fps`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 2
FPS = 25  # video frames per second of every record's lips (and of faces at face_fps 25)

SPLITS = ("train", "val", "test")
KINDS = ("movie", "audio", "speech")  # audio: audio-only media (no video arrays)
STREAMS = ("speech", "background")  # stream index = position
STEM_PREFIX = {"speech": "speech", "background": "bg"}  # stem -> array key prefix

# what each task generates (its streams) and which conditions it reads (DESIGN.md "Model")
TASKS = ("tts", "v2a", "v2s", "v2st")
TASK_STREAMS: dict[str, tuple[str, ...]] = {
    "tts": ("speech",),
    "v2s": ("speech",),
    "v2a": ("background",),
    "v2st": ("speech", "background"),
}
VIDEO_TASKS = frozenset({"v2a", "v2s", "v2st"})
TEXT_TASKS = frozenset({"tts", "v2s", "v2st"})

SCENE_TYPES = ("dialogue", "monologue", "narration", "unknown")
LABEL_FIELDS = ("scene_type", "gender", "age", "emotion")


@dataclass(frozen=True)
class MelProfile:
    """A log-mel exactly as one family of pretrained vocoders reads it.

    `style` names the reference front end: "vocos" is torchaudio's MelSpectrogram as Vocos and
    F5-TTS call it (centred reflect padding, HTK filters without area norm, magnitude);
    "hifigan" is HiFi-GAN V1's `mel_spectrogram` (reflect padding by (n_fft - hop) / 2, no
    centring, Slaney filters with area norm, sqrt(|X|^2 + 1e-9)). Values are
    log(max(mel, log_floor)).
    """

    name: str
    sample_rate: int
    n_fft: int
    hop: int
    win: int
    n_mels: int
    fmin: float
    fmax: float | None  # None: sample_rate / 2
    style: str
    log_floor: float

    @property
    def frame_rate(self) -> float:
        """Mel frames per second."""
        return self.sample_rate / self.hop

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MEL_PROFILES: dict[str, MelProfile] = {
    # Vocos `charactr/vocos-mel-24khz` and F5-TTS: 93.75 frames/s
    "vocos_24k": MelProfile(
        "vocos_24k", 24000, 1024, 256, 1024, 100, 0.0, None, style="vocos", log_floor=1e-7
    ),
    # BigVGAN 24 kHz 100-band: HiFi-GAN's front end with fmax 12 kHz, 93.75 frames/s
    "bigvgan_24k": MelProfile(
        "bigvgan_24k", 24000, 1024, 256, 1024, 100, 0.0, 12000.0, style="hifigan", log_floor=1e-5
    ),
    # HiFi-GAN V1 (universal, LJSpeech): 86.13 frames/s
    "hifigan_22k": MelProfile(
        "hifigan_22k", 22050, 1024, 256, 1024, 80, 0.0, 8000.0, style="hifigan", log_floor=1e-5
    ),
}


def mel_profile(name: str) -> MelProfile:
    """The profile called `name`, or a ValueError listing the known ones."""
    if name not in MEL_PROFILES:
        raise ValueError(f"unknown mel profile {name!r}; choose from {sorted(MEL_PROFILES)}")
    return MEL_PROFILES[name]


@dataclass(frozen=True)
class ArraySpec:
    """A record array: dtype and rank; `axis0` names what its first axis counts."""

    dtype: str
    ndim: int
    axis0: str


ARRAY_SPECS: dict[str, ArraySpec] = {
    "speech.codes": ArraySpec("int16", 2, "codebooks"),  # [q, t]
    "bg.codes": ArraySpec("int16", 2, "codebooks"),  # [q, t]
    "speech.mel": ArraySpec("float16", 2, "mel bins"),  # [m, n]
    "bg.mel": ArraySpec("float16", 2, "mel bins"),  # [m, n]
    "lips": ArraySpec("uint8", 3, "video frames"),  # [f, 96, 96]
    "face": ArraySpec("uint8", 4, "face frames"),  # [g, H, W, 3]
}
VIDEO_ARRAYS = ("lips", "face")


class SchemaError(ValueError):
    """A record that breaks the contract: unknown version, missing or mistyped fields, arrays."""


@dataclass(frozen=True)
class CodecInfo:
    """The codec whose codes a record holds; `random_weights` flags placeholder codes."""

    name: str
    sample_rate: int
    frame_rate: float
    codebooks: int
    path: str
    random_weights: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _need(d: Mapping[str, Any], name: str, types: type | tuple[type, ...], where: str) -> Any:
    if name not in d:
        raise SchemaError(f"{where} lacks the field {name!r}")
    value = d[name]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in _tuple(types):
        raise SchemaError(f"{where}: field {name!r} is {value!r}, not {_names(types)}")
    return value


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _names(types: type | tuple[type, ...]) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in _tuple(types))


V1_MESSAGE = (
    "was written by dubforge ingest schema version 1 (hop-240 mel, no split); this dubforge "
    f"reads version {SCHEMA_VERSION}. Re-ingest the source media: `dubforge ingest "
    "jobs/ingest.yaml input=<your media> output=<a new folder>`"
)


def check_version(d: Mapping[str, Any], where: str) -> None:
    """Refuse a record of another schema version with a message that says what to do."""
    version = d.get("schema_version") if isinstance(d, Mapping) else None
    if version == SCHEMA_VERSION:
        return
    if version == 1:
        raise SchemaError(f"{where} {V1_MESSAGE}")
    raise SchemaError(
        f"{where} has schema_version {version!r}; this dubforge reads version {SCHEMA_VERSION} "
        "(re-run ingest with this version, or upgrade dubforge)"
    )


@dataclass(frozen=True)
class ClipRecord:
    """One WebDataset sample's JSON (DESIGN.md "Contracts between stages"); times in seconds
    from the start of the source media. `tasks` are the tasks the stored arrays support;
    `ref_frames` (inference only) is how many leading speech frames are the given reference."""

    key: str
    movie_id: str
    split: str
    source: str
    kind: str
    start: float
    end: float
    text: str
    transcribed: bool
    codec: CodecInfo
    tasks: tuple[str, ...]
    language: str = "und"
    fps: int = FPS
    mel_profile: str | None = None
    energy_db: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    speaker: str | None = None
    face_coverage: float | None = None
    n_faces: int | None = None
    face_fps: int | None = None
    ref_frames: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        where = f"record {self.key!r}"
        if "." in self.key or self.key.count("/") != 1:
            raise SchemaError(f"{where}: key must be '<movie_id>/<clip_no>' without dots")
        if self.split not in SPLITS:
            raise SchemaError(f"{where}: split {self.split!r} is not one of {SPLITS}")
        if self.kind not in KINDS:
            raise SchemaError(f"{where}: kind {self.kind!r} is not one of {KINDS}")
        if not (math.isfinite(self.start) and math.isfinite(self.end) and self.end > self.start):
            raise SchemaError(f"{where}: needs 0 <= start < end, got {self.start}..{self.end}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise SchemaError(f"{where}: unknown tasks {unknown}; known: {TASKS}")
        if self.mel_profile is not None and self.mel_profile not in MEL_PROFILES:
            raise SchemaError(f"{where}: unknown mel profile {self.mel_profile!r}")
        if self.fps != FPS:
            raise SchemaError(f"{where}: fps {self.fps} (records are {FPS} fps)")

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def has_video(self) -> bool:
        return any(t in VIDEO_TASKS for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClipRecord:
        """Parse and check a record's JSON; raises SchemaError naming the field."""
        if not isinstance(d, Mapping):
            raise SchemaError(f"a record must be a JSON object, not {type(d).__name__}")
        where = f"record {d.get('key')!r}"
        check_version(d, where)
        codec = _need(d, "codec", dict, where)
        try:
            codec_info = CodecInfo(**codec)
        except TypeError as e:
            raise SchemaError(f"{where}: codec {codec!r} ({e})") from None
        opt = {
            f.name: d[f.name]
            for f in dataclasses.fields(cls)
            if f.name in d and f.name not in ("codec", "tasks")
        }
        try:
            return cls(
                **{
                    **opt,
                    "key": _need(d, "key", str, where),
                    "movie_id": _need(d, "movie_id", str, where),
                    "split": _need(d, "split", str, where),
                    "source": _need(d, "source", str, where),
                    "kind": _need(d, "kind", str, where),
                    "start": float(_need(d, "start", (int, float), where)),
                    "end": float(_need(d, "end", (int, float), where)),
                    "text": _need(d, "text", str, where),
                    "transcribed": _need(d, "transcribed", bool, where),
                    "codec": codec_info,
                    "tasks": tuple(_need(d, "tasks", list, where)),
                }
            )
        except TypeError as e:
            raise SchemaError(f"{where}: {e}") from None

    def check_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Every array is known, has its dtype and rank, and the video arrays agree with the
        clip's length; the tasks the record claims have their arrays."""
        where = f"record {self.key!r}"
        for name, arr in arrays.items():
            spec = ARRAY_SPECS.get(name)
            if spec is None:
                raise SchemaError(f"{where}: unknown array {name!r}; known: {sorted(ARRAY_SPECS)}")
            if str(arr.dtype) != spec.dtype or arr.ndim != spec.ndim:
                raise SchemaError(
                    f"{where}: array {name!r} is {arr.dtype} with {arr.ndim} dims; "
                    f"the contract says {spec.dtype} with {spec.ndim}"
                )
        if ("speech.mel" in arrays or "bg.mel" in arrays) and self.mel_profile is None:
            raise SchemaError(f"{where}: mel arrays without a mel_profile")
        if self.mel_profile is not None:
            bins = MEL_PROFILES[self.mel_profile].n_mels
            for name in ("speech.mel", "bg.mel"):
                if name in arrays and arrays[name].shape[0] != bins:
                    raise SchemaError(
                        f"{where}: {name} has {arrays[name].shape[0]} bins; "
                        f"profile {self.mel_profile} has {bins}"
                    )
        if "lips" in arrays:
            expect = round(self.duration * self.fps)
            if abs(len(arrays["lips"]) - expect) > 1:
                raise SchemaError(
                    f"{where}: {len(arrays['lips'])} lip frames for a {self.duration:.3f} s clip "
                    f"at {self.fps} fps ({expect} expected)"
                )
        for task in self.tasks:
            if task in VIDEO_TASKS and "lips" not in arrays:
                raise SchemaError(f"{where}: task {task!r} claimed without a 'lips' array")


def stem_array(stem: str, space: str) -> str:
    """The array key of a stem in an acoustic space ("codec" -> codes, "mel" -> mel)."""
    if stem not in STEM_PREFIX:
        raise ValueError(f"unknown stem {stem!r}; use one of {sorted(STEM_PREFIX)}")
    suffix = {"codec": "codes", "mel": "mel"}.get(space)
    if suffix is None:
        raise ValueError(f"unknown acoustic space {space!r}; use 'codec' or 'mel'")
    return f"{STEM_PREFIX[stem]}.{suffix}"


def tasks_for_arrays(keys: Any, space: str | None = None) -> tuple[str, ...]:
    """Tasks whose streams have arrays (in `space`, or in either space when None) and whose
    video needs are met by `keys`."""
    keys = set(keys)
    spaces = (space,) if space else ("codec", "mel")

    def has(stem: str) -> bool:
        return any(stem_array(stem, s) in keys for s in spaces)

    video = "lips" in keys
    return tuple(
        t for t in TASKS if all(has(s) for s in TASK_STREAMS[t]) and (video or t not in VIDEO_TASKS)
    )
