"""Evaluate an exported dubber checkpoint on ingest shards (`dubforge evaluate CKPT SHARDS`).

    summary = evaluate_checkpoint("runs/ckpt/tts", "runs/ingest/shards", "runs/eval/tts")

Per record (up to `limit`): the task is the most conditioned one the checkpoint and the record
both support (v2st, then v2s, then tts; v2a generates no speech to score). The first
`ref_fraction` of the speech is given as the reference voice (in-context infill, as at
inference); the rest is generated, decoded through the checkpoint's acoustic space, and only
that generated part is scored against the reference speech.

Reference speech, the first that exists for a record (its label goes into evaluation.json):
  "source"           a speech-corpus record: its source file is the clean utterance, decoded
                     over [start, end)
  "source_dialogue"  a movie record: the delivered dialogue stem beside the source
                     (`X.dialogue.wav|flac`, the ingest's stem convention); a movie's own source
                     is the mixture, never a speech reference
  "decoded_latents"  the record's stored mel / codes decoded the same way as the generated
                     latents, since shards carry no raw audio; scores then leave out the
                     vocoder's / codec's own error
Only local source files are read; a remote or missing one falls back to the latents.

Video metrics: AV-Align on the record's 25 fps mouth crops (the motion the model was conditioned
on); LSE needs 25 fps face crops, so it runs only on records ingested with faces.face_fps = 25.

Outputs in `out`: metrics.json + metrics.md (`write_report`: every metric per sample, n/a with
its reason), evaluation.json (settings, per-sample task and reference origin, skipped records,
summary), samples/<name>.gen|ref[.bg].wav|png for the first `samples` records.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dubforge import storage
from dubforge.eval.av_align import av_align
from dubforge.eval.config import EvalConfig
from dubforge.eval.evaluate import METRICS, Evaluator
from dubforge.eval.report import save_sample, summarize, write_report
from dubforge.eval.results import MetricResult, not_available
from dubforge.eval.syncnet import lse_metrics
from dubforge.ingest.decode import decode_audio
from dubforge.ingest.probe import MediaError
from dubforge.ingest.shards import read_shard
from dubforge.model.batch import collate, supported_tasks, to_waves
from dubforge.model.checkpoint import load_checkpoint, load_space
from dubforge.model.dubber import Dubber
from dubforge.model.flow import Guidance
from dubforge.model.presets import sampler_kwargs
from dubforge.model.spaces import AcousticSpace
from dubforge.schema import FPS, ClipRecord, SchemaError

EVAL_TASKS = ("v2st", "v2s", "tts")  # most conditioned first; each generates speech
STEM_EXTS = (".wav", ".flac")  # delivered stems, as dubforge.ingest.discover finds them


@dataclass(frozen=True)
class Item:
    """One record to evaluate: its metadata and arrays, the chosen task, a file-safe name."""

    meta: ClipRecord
    arrays: Mapping[str, np.ndarray]
    task: str
    name: str


def shard_paths(shards: str | Path) -> list[Path]:
    """The .tar shards of a folder (or of its `shards/` subfolder, as ingest writes them), of
    a glob pattern, or one file; sorted. FileNotFoundError when there are none."""
    p = Path(shards)
    if p.is_dir():
        found = sorted((p / "shards" if (p / "shards").is_dir() else p).glob("*.tar"))
    elif p.is_file():
        found = [p]
    else:
        found = sorted(Path(f) for f in glob.glob(str(shards)) if f.endswith(".tar"))
    if not found:
        raise FileNotFoundError(
            f"no .tar shards at {shards}: give an ingest output folder, its shards/ folder, "
            "a glob such as 'out/shards/*.tar', or one shard file"
        )
    return found


def choose_task(
    meta: ClipRecord, arrays: Mapping[str, np.ndarray], space: AcousticSpace,
    allowed: tuple[str, ...],
) -> tuple[str, str]:  # fmt: skip
    """(task, "") for an evaluable record, else ("", the reason it is skipped)."""
    if not space.has(dict(arrays), "speech"):
        return "", f"no {space.array_key('speech')!r} array for the reference voice"
    options = set(supported_tasks(arrays, space)) & set(allowed)
    task = next((t for t in EVAL_TASKS if t in options), "")
    return task, "" if task else f"supports none of {list(EVAL_TASKS)} in {list(allowed)}"


def read_items(
    paths: list[Path], space: AcousticSpace, allowed: tuple[str, ...], limit: int
) -> tuple[list[Item], list[dict[str, str]]]:
    """Up to `limit` evaluable records in shard order, and the skipped ones with reasons."""
    items: list[Item] = []
    skipped: list[dict[str, str]] = []
    for path in paths:
        for s in read_shard(path):
            if len(items) >= limit:
                return items, skipped
            try:
                record = ClipRecord.from_dict(s.meta)
            except SchemaError as e:
                skipped.append({"key": s.key, "shard": path.name, "reason": str(e)})
                continue
            task, reason = choose_task(record, s.arrays, space, allowed)
            if reason:
                skipped.append({"key": s.key, "shard": path.name, "reason": reason})
            else:
                name = _file_name(s.key, {it.name for it in items})
                items.append(Item(record, s.arrays, task, name))
    return items, skipped


def _file_name(key: str, taken: set[str]) -> str:
    """`movie_000/00001` -> `movie_000_00001`: save_sample takes [A-Za-z0-9._-] only."""
    base = "s" + re.sub(r"[^A-Za-z0-9._-]", "_", key)
    base = base[1:] if base[1:2].isalnum() else base
    name, i = base, 1
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def _local_file(uri: str | None) -> Path | None:
    if not uri or not storage.is_local(uri):
        return None
    path = storage.local_path(uri)
    return path if path.is_file() else None


def _speech_file(meta: ClipRecord) -> tuple[Path | None, str]:
    """The local file holding the record's clean speech, with its origin label, if any."""
    source = _local_file(meta.source)
    if source is not None and meta.kind == "speech":
        return source, "source"
    if source is not None and meta.kind == "movie":
        for ext in STEM_EXTS:
            stem = source.with_name(f"{source.stem}.dialogue{ext}")
            if stem.is_file():
                return stem, "source_dialogue"
    return None, ""


def reference_speech(
    meta: ClipRecord, arrays: Mapping[str, np.ndarray], space: AcousticSpace
) -> tuple[np.ndarray, str]:
    """(reference speech at the space's rate, its origin); see the module docstring. A file
    that fails to decode falls back to the latents, and the origin says why."""
    path, origin = _speech_file(meta)
    start, seconds = meta.start, meta.duration
    if path is not None:
        try:
            return decode_audio(path, start, seconds, space.sample_rate), origin
        except MediaError as e:
            origin = f"decoded_latents ({path} unreadable: {e.reason})"
    latents = space.latents(dict(arrays), "speech")[None]  # latents: [1, n, c]
    return space.decode(latents)[0].numpy().astype(np.float32), origin or "decoded_latents"


def generate(
    model: Dubber, items: list[Item], space: AcousticSpace, *, ref_fraction: float,
    batch_size: int, seed: int, sample_kwargs: Mapping[str, Any],
) -> list[tuple[dict[str, np.ndarray], int]]:  # fmt: skip
    """Per item: ({stem: generated wave}, latent frames given as the reference). The reference
    is whole video frames long, so lips and latents cut at the same instant."""
    repeat = space.frames_per_video_frame()
    device = next(model.parameters()).device
    out: list[tuple[dict[str, np.ndarray], int]] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        refs = [
            int(space.latents(dict(it.arrays), "speech").shape[0] * ref_fraction) // repeat * repeat
            for it in chunk
        ]
        recs = [
            (dataclasses.replace(it.meta, ref_frames=r), it.arrays)
            for it, r in zip(chunk, refs, strict=True)
        ]
        batch = collate(recs, space, tasks=[it.task for it in chunk], train=False)
        with torch.no_grad():
            latents = model.sample(batch.to(device), seed=seed + i, **sample_kwargs).cpu()
        out += list(zip(to_waves(space, latents, batch), refs, strict=True))
    return out


def _video_metrics(
    ev: Evaluator, wave: np.ndarray, sr: int, item: Item, first_frame: int
) -> dict[str, MetricResult]:
    """AV-Align on the mouth crops, LSE on 25 fps face crops, both from `first_frame` on."""
    lips, face = item.arrays.get("lips"), item.arrays.get("face")
    if lips is None:
        out = {"av_align": not_available("av_align", f"record has no video (task {item.task})")}
    else:
        window = ev.config.av_align_window_frames
        out = {"av_align": av_align(wave, sr, np.asarray(lips)[first_frame:], FPS, window)}
    reason = ""
    if ev.syncnet is not None and face is None:
        reason = f"record has no face crops (task {item.task})"
    elif ev.syncnet is not None and item.meta.face_fps != FPS:
        reason = (
            f"record has face crops at {item.meta.face_fps} fps; LSE needs 25 fps face "
            "tracks (ingest with faces.face_fps=25)"
        )
    if reason:
        return {
            **out,
            "lse_d": not_available("lse_d", reason),
            "lse_c": not_available("lse_c", reason),
        }
    frames = None if face is None else np.asarray(face)[first_frame:]
    return {**out, **lse_metrics(ev.syncnet, wave, sr, frames, FPS, ev.config.lse_vshift)}


def score(
    ev: Evaluator,
    item: Item,
    gen: np.ndarray,
    ref: np.ndarray,
    sr: int,
    first: int,
    first_frame: int,
) -> dict[str, MetricResult]:
    """Every metric in METRICS for the generated part (samples from `first`) of `gen`."""
    n = min(len(gen), len(ref))
    g, r = gen[first:n], ref[first:n]
    if len(g) < sr // 10:
        return {k: not_available(k, "generated part shorter than 0.1 s") for k in METRICS}
    # video metrics apart: AV-Align and LSE read different frames of the record
    out = ev(g, r, sr, text=item.meta.text or None)
    return {**out, **_video_metrics(ev, g, sr, item, first_frame)}


def _sampler(cfg: Any, nfe: int | None, guidance: Guidance | None | str) -> dict[str, Any]:
    kw = sampler_kwargs(cfg)
    if nfe is not None:
        kw["nfe"] = nfe
    if guidance != "checkpoint":
        kw["cfg"] = guidance
    return kw


def _plain(v: Any) -> Any:
    return asdict(v) if is_dataclass(v) and not isinstance(v, type) else v


def _save(
    folder: Path, name: str, waves: Mapping[str, np.ndarray], ref: np.ndarray, sr: int
) -> None:
    save_sample(folder, f"{name}.gen", waves["speech"], sr)
    save_sample(folder, f"{name}.ref", ref, sr)
    if "background" in waves:
        save_sample(folder, f"{name}.gen.bg", waves["background"], sr)


def _score_items(
    ev: Evaluator, items: list[Item], gens: list[tuple[dict[str, np.ndarray], int]],
    space: AcousticSpace, out: Path, samples: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """Per item: a metrics row for write_report and an info row (task, reference origin,
    scored part); the first `samples` items' audio goes to out/samples."""
    sr, hop = space.sample_rate, round(space.sample_rate / space.frame_rate)
    rows, infos = [], []
    for k, (item, (waves, ref_frames)) in enumerate(zip(items, gens, strict=True)):
        ref, origin = reference_speech(item.meta, item.arrays, space)
        first_frame = ref_frames // space.frames_per_video_frame()
        metrics = score(ev, item, waves["speech"], ref, sr, ref_frames * hop, first_frame)
        rows.append({"sample": item.name, **metrics})
        infos.append({
            "sample": item.name, "key": item.meta.key, "task": item.task,
            "reference": origin, "seconds": len(waves["speech"]) / sr,
            "scored_from_s": ref_frames * hop / sr,
        })  # fmt: skip
        if k < samples:
            _save(out / "samples", item.name, waves, ref, sr)
    return rows, infos


def evaluate_checkpoint(
    checkpoint: str | Path,
    shards: str | Path,
    out: str | Path,
    *,
    limit: int = 8,
    nfe: int | None = 16,
    guidance: Guidance | None | Literal["checkpoint"] = "checkpoint",
    ref_fraction: float = 0.3,
    eval_config: EvalConfig | None = None,
    samples: int = 3,
    seed: int = 0,
    batch_size: int = 4,
    device: str = "cpu",
    evaluator: Evaluator | None = None,
) -> dict[str, Any]:
    """Generate for up to `limit` shard records with the exported `checkpoint`, score them and
    write the report into `out`; returns the summary that out/evaluation.json holds.

    `nfe`: velocity evaluations (None: the checkpoint's sampler setting). `guidance`: a
    `Guidance`, None for no CFG, or "checkpoint" for the export's config. `ref_fraction`: share
    of each clip's speech given as the reference voice, in [0, 1). `evaluator`: a prebuilt one
    (models loaded once across calls), else built from `eval_config`."""
    if limit < 1 or samples < 0 or batch_size < 1 or not 0.0 <= ref_fraction < 1.0:
        raise ValueError(
            f"limit={limit} and batch_size={batch_size} must be >= 1, samples={samples} >= 0, "
            f"ref_fraction={ref_fraction} in [0, 1)"
        )
    ckpt = load_checkpoint(checkpoint, device=device)
    space = load_space(ckpt, device=device)
    items, skipped = read_items(shard_paths(shards), space, tuple(ckpt.config.tasks), limit)
    if not items:
        raise ValueError(f"no evaluable record in {shards}; skipped: {skipped[:3]}")
    kw = _sampler(ckpt.config, nfe, guidance)
    gens = generate(ckpt.model, items, space, ref_fraction=ref_fraction,
                    batch_size=batch_size, seed=seed, sample_kwargs=kw)  # fmt: skip
    ev = evaluator or Evaluator(eval_config)
    rows, infos = _score_items(ev, items, gens, space, Path(out), samples)
    paths = write_report(rows, out)
    summary = {
        "checkpoint": str(checkpoint), "shards": str(shards), "space": ckpt.codec.get("space"),
        "settings": {"limit": limit, "ref_fraction": ref_fraction, "seed": seed,
                     **{k: _plain(v) for k, v in kw.items()}},
        "samples": infos, "skipped": skipped, "metrics": summarize(rows),
        "outputs": {k: str(v) for k, v in paths.items()},
    }  # fmt: skip
    (Path(out) / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
