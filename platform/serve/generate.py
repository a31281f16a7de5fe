"""Dub lines with a loaded export: what a Serve model replica runs per `@serve.batch` call.

    gen = Generator.from_folder("runs/train/debug/exports/v2s")
    waves = gen.generate([DubInput(text="Hello.", duration=1.2, lips=None, face=None,
                                   face_fps=25, labels={}, reference=wave, reference_rate=16000,
                                   reference_text="", settings=gen.defaults())])

Each input is one line: its script, the seconds it must fill, optional 25 fps mouth crops
(then the task is v2s, else tts) and face crops, optional labels, and a reference voice. The
reference prompts the line exactly as the evaluation protocol's setting 2 does
(`dubforge.eval.protocol.prompted`): its speech, encoded into the space's arrays by the ingest
code (`dubforge.mel.log_mel` in the mel profile, `CodecTokenizer` codes in a codec space), is
the given prefix; the text is the reference's transcript then the line's; lips, face and
labels are the line's. Only the part after the prompt is returned, fitted to the duration.

Inputs sharing (nfe, method, sway) are sampled as one padded, masked batch (one sampling run,
counted in `calls`); guidance and seed are per input, and each input's output does not depend
on the others in its batch beyond float rounding (`flow.sample` with per-row settings).

Shape key: m = mel bins, q = codebooks, t = array frames, f = lip frames, g = face frames.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from dubforge.eval.protocol import Pair, prompted
from dubforge.model import flow
from dubforge.model.batch import Batch, collate
from dubforge.model.checkpoint import Checkpoint, load_checkpoint, load_space
from dubforge.model.flow import SWAY_RANGE, Guidance
from dubforge.model.presets import sampler_kwargs
from dubforge.model.spaces import AcousticSpace, CodecSpace, MelSpace
from dubforge.schema import (
    ARRAY_SPECS,
    FPS,
    LABEL_FIELDS,
    STREAMS,
    ClipRecord,
    CodecInfo,
    tasks_for_arrays,
)

MAX_NFE = 128
MAX_GUIDANCE = 20.0
MIN_REFERENCE_SECONDS = 0.1
DECODE_CONTEXT = 16  # prompt frames vocoded before a line, so its first samples have context
SPEECH_TASKS = ("v2s", "tts")  # what a line is generated as, most conditioned first


@dataclass(frozen=True)
class SamplerSettings:
    """ODE sampler settings of one input: velocity evaluations, method, sway coefficient,
    MM-MovieDubber eq. 9 guidance (None: unguided) and the noise seed."""

    nfe: int
    method: Literal["euler", "midpoint"]
    sway: float
    guidance: Guidance | None
    seed: int


@dataclass(frozen=True)
class DubInput:
    """One line to dub, prepared by the ingress (all numpy, picklable)."""

    text: str  # the new line's script
    duration: float  # seconds the speech must fill (the clip's duration)
    lips: np.ndarray | None  # [f, 96, 96] uint8 at 25 fps, f = the clip's video frames
    face: np.ndarray | None  # [g, H, W, 3] uint8 at face_fps
    face_fps: int
    labels: Mapping[str, str]  # scene_type / gender / age / emotion; missing = unknown
    reference: np.ndarray  # [samples] mono float32 speech of the reference voice
    reference_rate: int
    reference_text: str  # transcript of the reference ("" when unknown)
    settings: SamplerSettings


def _check_array(name: str, value: np.ndarray, shape: str) -> None:
    spec = ARRAY_SPECS[name]
    if not isinstance(value, np.ndarray) or str(value.dtype) != spec.dtype:
        kind = getattr(value, "dtype", type(value).__name__)
        raise ValueError(f"{name}: must be a {spec.dtype} numpy array {shape}, got {kind}")
    if value.ndim != spec.ndim or len(value) == 0:
        raise ValueError(f"{name}: must be {shape} with at least one frame, got {value.shape}")


def _check_settings(s: SamplerSettings) -> None:
    if isinstance(s.nfe, bool) or not isinstance(s.nfe, int) or not 1 <= s.nfe <= MAX_NFE:
        raise ValueError(f"settings.nfe={s.nfe!r}: must be an integer in [1, {MAX_NFE}]")
    if s.method not in ("euler", "midpoint"):
        raise ValueError(f"settings.method={s.method!r}: use 'euler' or 'midpoint'")
    if s.method == "midpoint" and s.nfe % 2:
        raise ValueError(f"settings.nfe={s.nfe}: midpoint needs an even nfe (2 per step)")
    if not (math.isfinite(s.sway) and SWAY_RANGE[0] <= s.sway <= SWAY_RANGE[1]):
        raise ValueError(
            f"settings.sway={s.sway!r}: must lie in [{SWAY_RANGE[0]}, {SWAY_RANGE[1]:.3f}]"
        )
    if s.guidance is not None:
        for field in ("video", "labels", "text"):
            v = getattr(s.guidance, field)
            if not (isinstance(v, Real) and math.isfinite(v) and 0 <= v <= MAX_GUIDANCE):
                raise ValueError(
                    f"settings.guidance.{field}={v!r}: a guidance scale must be finite and in "
                    f"[0, {MAX_GUIDANCE:g}]"
                )
    if isinstance(s.seed, bool) or not isinstance(s.seed, int) or not 0 <= s.seed < 2**63:
        raise ValueError(f"settings.seed={s.seed!r}: must be an integer in [0, 2**63)")


def check_input(inp: DubInput, max_seconds: float) -> None:
    """Raise ValueError naming the field when an input cannot be dubbed: empty text, duration
    <= 0 or above `max_seconds`, lips not [f, h, w] uint8 with f within one frame of
    duration * 25, face not [g, H, W, 3] uint8 or without a positive face_fps, labels outside
    LABEL_FIELDS, a reference that is not finite 1-D float audio of at least 0.1 s, sampler
    settings out of range (nfe in [1, 128], guidance scales finite in [0, 20])."""
    if not isinstance(inp.text, str) or not inp.text.strip():
        raise ValueError("text: the line's script is empty")
    d = inp.duration
    if not (isinstance(d, Real) and math.isfinite(d) and 0 < d <= max_seconds):
        raise ValueError(f"duration={d!r}: must be > 0 and at most {max_seconds:g} seconds")
    if inp.lips is not None:
        _check_array("lips", inp.lips, "[frames, 96, 96]")
        expect = round(d * FPS)
        if abs(len(inp.lips) - expect) > 1:
            raise ValueError(
                f"lips: {len(inp.lips)} frames for a {d:.3f} s line at {FPS} fps ({expect} "
                "expected, +-1)"
            )
    if inp.face is not None:
        _check_array("face", inp.face, "[frames, H, W, 3]")
        if inp.face.shape[-1] != 3:
            raise ValueError(f"face: must be RGB [frames, H, W, 3], got {inp.face.shape}")
        if isinstance(inp.face_fps, bool) or not isinstance(inp.face_fps, int) or inp.face_fps < 1:
            raise ValueError(f"face_fps={inp.face_fps!r}: must be a positive integer")
    unknown = sorted(set(inp.labels) - set(LABEL_FIELDS))
    if unknown:
        raise ValueError(f"labels: unknown fields {unknown}; known: {list(LABEL_FIELDS)}")
    rate = inp.reference_rate
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise ValueError(f"reference_rate={rate!r}: must be a positive integer (Hz)")
    ref = inp.reference
    if not isinstance(ref, np.ndarray) or ref.ndim != 1 or ref.dtype.kind != "f":
        shape = getattr(ref, "shape", type(ref).__name__)
        raise ValueError(f"reference: must be mono float audio [samples], got {shape}")
    if not np.all(np.isfinite(ref)):
        raise ValueError("reference: holds NaN or inf samples")
    if len(ref) < MIN_REFERENCE_SECONDS * rate:
        raise ValueError(
            f"reference: {len(ref) / rate:.3f} s of speech; at least {MIN_REFERENCE_SECONDS} s "
            "is needed"
        )
    if not isinstance(inp.reference_text, str):
        raise ValueError("reference_text: must be a string ('' when unknown)")
    _check_settings(inp.settings)


def _fit(wave: np.ndarray, n: int) -> np.ndarray:
    """`wave` cut or zero-padded to exactly n samples."""
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, len(wave))] = wave[:n]
    return out


def _batches(inputs: Sequence[DubInput]) -> list[list[int]]:
    """Indices of the inputs sampled together: one batch per (nfe, method, sway), split
    further only where two inputs' lip or face crops differ in size (collate stacks them)."""
    batches: list[tuple[tuple[Any, ...], list[Any], list[int]]] = []
    for i, inp in enumerate(inputs):
        s = inp.settings
        key = (s.nfe, s.method, float(s.sway))
        crops = [None if x is None else tuple(x.shape[1:]) for x in (inp.lips, inp.face)]
        for k, shapes, idx in batches:
            fits = all(a is None or b is None or a == b for a, b in zip(crops, shapes, strict=True))
            if k == key and fits:
                shapes[:] = [a if a is not None else b for a, b in zip(crops, shapes, strict=True)]
                idx.append(i)
                break
        else:
            batches.append((key, crops, [i]))
    return [idx for _, _, idx in batches]


class Generator:
    """A loaded export (model + acoustic space) that dubs batches of `DubInput`s.

    `calls` counts sampling runs (batched ODE loops), so a caller can see how many requests
    shared one. `max_seconds` bounds an input's duration (`check_input`)."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        space: AcousticSpace,
        device: str = "cpu",
        *,
        max_seconds: float = math.inf,
    ) -> None:
        tasks = [t for t in SPEECH_TASKS if t in checkpoint.config.tasks]
        if not tasks:
            raise ValueError(
                f"the export's tasks {list(checkpoint.config.tasks)} include neither tts nor "
                "v2s: it cannot dub a line"
            )
        self.checkpoint = checkpoint
        self.space = space
        self.device = torch.device(device)
        self.model = checkpoint.model.to(self.device).eval()
        self.tasks = tuple(tasks)
        self.max_seconds = max_seconds
        self.calls = 0
        self._tokenizer: Any = None

    @classmethod
    def from_folder(
        cls, folder: str | Path, device: str = "cpu", *, max_seconds: float = math.inf
    ) -> Generator:
        """A Generator for the export folder `folder` (load_checkpoint + load_space)."""
        ckpt = load_checkpoint(folder, device=device)
        return cls(ckpt, load_space(ckpt, device=device), device, max_seconds=max_seconds)

    @property
    def sample_rate(self) -> int:
        """Sample rate (Hz) of the generated speech."""
        return self.space.sample_rate

    @property
    def random_weights(self) -> bool:
        """True for an export built with random weights (its metadata says so)."""
        return bool(self.checkpoint.metadata.get("random_weights", False))

    def defaults(self) -> SamplerSettings:
        """The export's sampler settings (its config's sampler section), seed 0."""
        kw = sampler_kwargs(self.checkpoint.config)
        return SamplerSettings(kw["nfe"], kw["method"], kw["sway"], kw["cfg"], 0)

    @property
    def info(self) -> dict[str, Any]:
        """What the export is, for the API's model listing: preset, space, vocoder, tasks,
        guidance and sampler defaults, training provenance when recorded, random_weights."""
        cfg, meta = self.checkpoint.config, self.checkpoint.metadata
        s = cfg.sampler
        out: dict[str, Any] = {
            "preset": cfg.preset,
            "space": self._space_info(),
            "vocoder": self._vocoder_info(),
            "sample_rate": self.sample_rate,
            "tasks": list(self.tasks),
            "guidance": s.cfg.model_dump(mode="json"),
            "sampler": {"nfe": s.nfe, "method": s.method, "sway": s.sway},
            "random_weights": self.random_weights,
        }
        training = {k: meta[k] for k in ("run_id", "stage", "step") if k in meta}
        if training:
            out["training"] = training
        return out

    def _space_info(self) -> dict[str, Any]:
        space = self.space
        out: dict[str, Any] = {"kind": space.name, "frame_rate": space.frame_rate}
        if isinstance(space, MelSpace):
            out["mel_profile"] = space.profile.name
        elif isinstance(space, CodecSpace):
            out.update(codec=space.kind, codebooks=space.codebooks)
        return out

    def _vocoder_info(self) -> dict[str, Any]:
        space = self.space
        if isinstance(space, MelSpace):
            ref = space.vocoder_ref
            return {"kind": ref.kind if ref else "griffin_lim", "fallback": space.fallback}
        return {"kind": "codec", "fallback": space.fallback}

    def task_for(self, inp: DubInput) -> str:
        """v2s when the input has lips and the export serves v2s, else tts; ValueError when
        the export serves neither of what the input allows."""
        if inp.lips is not None and "v2s" in self.tasks:
            return "v2s"
        if "tts" in self.tasks:
            return "tts"
        raise ValueError("lips: this export serves v2s only, so every line needs mouth crops")

    def generate(self, inputs: Sequence[DubInput]) -> list[np.ndarray]:
        """The dubbed speech of each input: mono float32 [round(duration * sample_rate)].
        Inputs sharing (nfe, method, sway) are sampled as one batch (`_batches`)."""
        for i, inp in enumerate(inputs):
            try:
                check_input(inp, self.max_seconds)
                self.task_for(inp)
            except ValueError as e:
                raise ValueError(f"input {i}: {e}") from e
        out: list[np.ndarray | None] = [None] * len(inputs)
        for idx in _batches(inputs):
            for i, wave in zip(idx, self._generate_batch([inputs[i] for i in idx]), strict=True):
                out[i] = wave
        return [w for w in out if w is not None]

    def _generate_batch(self, inputs: Sequence[DubInput]) -> list[np.ndarray]:
        """One sampling run for inputs that share a group key."""
        recs, prompts = [], []
        for inp in inputs:
            record, arrays, frames = self._prompted(inp)
            recs.append((record, arrays))
            prompts.append(frames)
        tasks = [self.task_for(inp) for inp in inputs]
        batch = collate(recs, self.space, tasks=tasks, train=False)
        s = inputs[0].settings
        latents = flow.sample(
            self.model,
            batch.to(self.device),
            nfe=s.nfe,
            method=s.method,
            sway=s.sway,
            cfg=[inp.settings.guidance for inp in inputs],
            seed=[inp.settings.seed for inp in inputs],
        ).cpu()
        self.calls += 1
        return [
            self._decode_line(latents[i], batch, i, frames, inp)
            for i, (frames, inp) in enumerate(zip(prompts, inputs, strict=True))
        ]

    def _decode_line(
        self, latents: Tensor, batch: Batch, i: int, frames: int, inp: DubInput
    ) -> np.ndarray:
        """Row i's generated speech (latents [s, n, c]) as a wave: only the line's frames and
        `DECODE_CONTEXT` frames of the prompt before them go through the vocoder (the prompt
        is given, and vocoding it would double the cost), then the context is cut off."""
        speech = STREAMS.index("speech")
        j = next(j for j in range(latents.shape[0]) if int(batch.stream_ids[i, j]) == speech)
        start = max(0, frames - DECODE_CONTEXT)
        z = latents[j, start : int(batch.lengths[i])][None]  # z: [1, n_line + context, c]
        wave = self.space.decode(z)[0].numpy().astype(np.float32)
        hop = self.space.sample_rate / self.space.frame_rate
        return _fit(wave[round((frames - start) * hop) :], round(inp.duration * self.sample_rate))

    def _prompted(self, inp: DubInput) -> tuple[ClipRecord, dict[str, np.ndarray], int]:
        """(record, arrays, prompt latent frames) of the reference followed by the line, built
        by the evaluation protocol's `prompted` (setting 2: another clip's voice)."""
        space, key = self.space, self.space.array_key("speech")
        n = math.ceil(inp.duration * space.frame_rate - 1e-6)  # the line's latent frames
        target_arrays: dict[str, np.ndarray] = {key: self._placeholder(n)}
        if inp.lips is not None:
            target_arrays["lips"] = inp.lips
            if inp.face is not None:
                target_arrays["face"] = inp.face
        seconds = len(inp.reference) / inp.reference_rate
        target = self._record(
            "line/00000", inp.text.strip(), inp.duration, target_arrays, inp.labels,
            inp.face_fps if inp.face is not None and inp.lips is not None else None,
        )  # fmt: skip
        ref_arrays = {key: self.encode_reference(inp.reference, inp.reference_rate)}
        ref = self._record(
            "reference/00000", inp.reference_text.strip(), seconds, ref_arrays, {}, None
        )
        pair = Pair(target, target_arrays, ref, ref_arrays)
        record, arrays, _ = prompted(pair, key, space.array_key("background"), space.frame_rate)
        frames = arrays[key].shape[-1] - n
        return dataclasses.replace(record, ref_frames=frames), arrays, frames

    def _record(
        self,
        key: str,
        text: str,
        seconds: float,
        arrays: Mapping[str, np.ndarray],
        labels: Mapping[str, str],
        face_fps: int | None,
    ) -> ClipRecord:
        space = self.space
        codebooks = space.codebooks if isinstance(space, CodecSpace) else 0
        codec = CodecInfo(space.name, space.sample_rate, space.frame_rate, codebooks, "")
        return ClipRecord(
            key=key, movie_id=key.split("/")[0], split="test", source="request",
            kind="movie" if "lips" in arrays else "speech", start=0.0, end=seconds, text=text,
            transcribed=bool(text), codec=codec, tasks=tasks_for_arrays(arrays, space.name),
            mel_profile=space.profile.name if isinstance(space, MelSpace) else None,
            labels=dict(labels), face_fps=face_fps,
        )  # fmt: skip

    def _placeholder(self, n: int) -> np.ndarray:
        """The line's speech array before it is generated: n frames of silence (the mel
        profile's log floor) or code 0; the sampler never reads it (it is all span)."""
        space = self.space
        if isinstance(space, MelSpace):
            fill = math.log(space.profile.log_floor)
            return np.full((space.latent_dim, n), fill, dtype=np.float16)  # [m, t]
        assert isinstance(space, CodecSpace)
        return np.zeros((space.codebooks, n), dtype=np.int16)  # [q, t]

    def encode_reference(self, wave: np.ndarray, rate: int) -> np.ndarray:
        """Reference speech -> the space's speech array as ingest writes it: log-mel [m, t]
        float16 in the mel profile, or codec codes [q, t] int16."""
        wave = np.asarray(wave, dtype=np.float32)
        space = self.space
        if isinstance(space, MelSpace):
            from dubforge.mel import log_mel, resample_for

            wave = resample_for(wave, rate, space.profile)
            return log_mel(wave, space.profile.sample_rate, space.profile).astype(np.float16)
        assert isinstance(space, CodecSpace)
        from dubforge.eval.audio import resample

        if self._tokenizer is None:
            from dubforge.ingest.tokenize import CodecTokenizer

            self._tokenizer = CodecTokenizer(space.path, device=str(self.device))
        wave = resample(wave, rate, self._tokenizer.sample_rate).astype(np.float32)
        # residual codebooks: the first k codes of all are the codes of k
        return self._tokenizer.encode(wave)[: space.codebooks]
