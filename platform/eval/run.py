"""Evaluate an exported dubber checkpoint on held-out clips (`dubforge evaluate JOB.yaml`).

    summary = evaluate_checkpoint("runs/train/debug/exports/v2st", "runs/shards/shards", "out")

Clips come from the `val` (or `test`) split folder of the ingest output, never `train`. Per
target clip (up to `clips`), the task is the most conditioned one the checkpoint and the record
both support (v2st, then v2s, then tts; v2a generates no speech to score). The protocol
(`protocol.py`) decides the reference voice: setting 2 (default) another clip of the same
speaker, setting 1 the target's own audio. The prompted record (reference, then target) is
generated with the reference given; the whole target part is decoded through the checkpoint's
acoustic space and scored: speech metrics against the target's speech, WER against the
target's script, AV-Align / LSE on the target's crops, and for v2st the background stream
(AV-Align on the clip's frames, DNSMOS BAK, energy ratio to the reference background).

Target speech, the first that exists for a record (its label goes into evaluation.json):
  "source"           a speech-corpus record: its source file is the clean utterance, decoded
                     over [start, end)
  "source_dialogue"  a movie record: the delivered dialogue stem beside the source
                     (`X.dialogue.wav|flac`, the ingest's stem convention); a movie's own source
                     is the mixture, never a speech reference
  "decoded_latents"  the record's stored mel / codes decoded the same way as the generated
                     latents, since shards carry no raw audio; scores then leave out the
                     vocoder's / codec's own error
Only local source files are read; a remote or missing one falls back to the latents.

Outputs in `out`: metrics.json + metrics.md (`write_report`: every metric per sample, n/a with
its reason), evaluation.json (protocol, split, vocoder, settings, per-sample task, reference
clip and target-speech origin, skipped records, summary), samples/<name>.gen|ref[.bg].wav|png.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dubforge import storage
from dubforge.config import ConfigError
from dubforge.eval.av_align import av_align
from dubforge.eval.config import EvalConfig
from dubforge.eval.evaluate import METRICS, Evaluator
from dubforge.eval.job import EvaluateConfig
from dubforge.eval.protocol import Pair, Protocol, pair_references, prompted
from dubforge.eval.report import save_sample, summarize, write_report
from dubforge.eval.results import MetricResult, not_available
from dubforge.eval.syncnet import lse_metrics
from dubforge.ingest.decode import decode_audio, decode_video
from dubforge.ingest.probe import MediaError, probe
from dubforge.ingest.shards import read_shard
from dubforge.model.batch import collate, supported_tasks, to_waves
from dubforge.model.checkpoint import load_checkpoint, load_space
from dubforge.model.dubber import Dubber
from dubforge.model.flow import Guidance
from dubforge.model.presets import sampler_kwargs
from dubforge.model.spaces import AcousticSpace, MelSpace
from dubforge.schema import FPS, SPLITS, ClipRecord, SchemaError

EVAL_TASKS = ("v2st", "v2s", "tts")  # most conditioned first; each generates speech
STEM_EXTS = (".wav", ".flac")  # delivered stems, as dubforge.ingest.discover finds them


@dataclass(frozen=True)
class Item:
    """One target to evaluate: its record and arrays, the chosen task, a file-safe name, and
    (once paired by the protocol) the reference clip that prompts it."""

    meta: ClipRecord
    arrays: Mapping[str, np.ndarray]
    task: str
    name: str
    ref: ClipRecord | None = None
    ref_arrays: Mapping[str, np.ndarray] | None = None


def shard_paths(shards: str | Path, split: str) -> list[Path]:
    """The .tar shards of one split: `<shards>/<split>/**.tar`, where `shards` is ingest's
    shards/ folder or the ingest output holding it; sorted. FileNotFoundError when none."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    p = Path(shards)
    base = p / "shards" if (p / "shards" / split).is_dir() else p
    found = sorted((base / split).glob("**/*.tar"))
    if not found:
        raise FileNotFoundError(
            f"no .tar shards under {base / split}: give ingest's shards/ folder (holding "
            f"train/ val/ test/) or the ingest output folder, and a split that has clips"
        )
    return found


def choose_task(
    meta: ClipRecord,
    arrays: Mapping[str, np.ndarray],
    space: AcousticSpace,
    allowed: tuple[str, ...],
) -> tuple[str, str]:
    """(task, "") for an evaluable record, else ("", the reason it is skipped)."""
    if not space.has(dict(arrays), "speech"):
        return "", f"no {space.array_key('speech')!r} array for the reference voice"
    options = set(supported_tasks(arrays, space)) & set(allowed)
    task = next((t for t in EVAL_TASKS if t in options), "")
    return task, "" if task else f"supports none of {list(EVAL_TASKS)} in {list(allowed)}"


def read_records(
    paths: list[Path], split: str, limit: int
) -> tuple[list[tuple[ClipRecord, dict[str, np.ndarray]]], list[dict[str, str]]]:
    """Up to `limit` records of `split` in shard order, and the ones refused, with reasons (a
    foreign schema version; a record of another split, which must not be scored)."""
    out: list[tuple[ClipRecord, dict[str, np.ndarray]]] = []
    skipped: list[dict[str, str]] = []
    for path in paths:
        for s in read_shard(path):
            if len(out) >= limit:
                return out, skipped
            try:
                record = ClipRecord.from_dict(s.meta)
            except SchemaError as e:
                skipped.append({"key": s.key, "shard": path.name, "reason": str(e)})
                continue
            if record.split != split:
                reason = f"a {record.split} record in the {split} folder: not scored"
                skipped.append({"key": s.key, "shard": path.name, "reason": reason})
                continue
            out.append((record, dict(s.arrays)))
    return out, skipped


def read_items(
    records: list[tuple[ClipRecord, dict[str, np.ndarray]]],
    space: AcousticSpace,
    allowed: tuple[str, ...],
    limit: int,
) -> tuple[list[Item], list[dict[str, str]]]:
    """Up to `limit` evaluable targets among `records`, and the skipped ones with reasons."""
    items: list[Item] = []
    skipped: list[dict[str, str]] = []
    for record, arrays in records:
        if len(items) >= limit:
            break
        task, reason = choose_task(record, arrays, space, allowed)
        if reason:
            skipped.append({"key": record.key, "reason": reason})
        else:
            name = _file_name(record.key, {it.name for it in items})
            items.append(Item(record, arrays, task, name))
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
    model: Dubber,
    items: list[Item],
    space: AcousticSpace,
    *,
    batch_size: int,
    seed: int,
    sample_kwargs: Mapping[str, Any],
) -> list[tuple[dict[str, np.ndarray], float]]:
    """Per item: ({stem: generated wave of the target part}, prompt seconds). The prompt (the
    reference clip's speech) is given; the target part is generated whole."""
    device = next(model.parameters()).device
    keys = (space.array_key("speech"), space.array_key("background"), space.frame_rate)
    out: list[tuple[dict[str, np.ndarray], float]] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        recs, prompts = [], []
        for it in chunk:
            assert it.ref is not None and it.ref_arrays is not None, "pair items first"
            pair = Pair(it.meta, it.arrays, it.ref, it.ref_arrays)
            record, arrays, seconds = prompted(pair, *keys)
            frames = (
                space.latents(arrays, "speech").shape[0]
                - space.latents(dict(it.arrays), "speech").shape[0]
            )  # the prompt's latent frames
            recs.append((dataclasses.replace(record, ref_frames=frames), arrays))
            prompts.append((frames, seconds))
        batch = collate(recs, space, tasks=[it.task for it in chunk], train=False)
        with torch.no_grad():
            latents = model.sample(batch.to(device), seed=seed + i, **sample_kwargs).cpu()
        hop = space.sample_rate / space.frame_rate
        for waves, (frames, seconds) in zip(to_waves(space, latents, batch), prompts, strict=True):
            first = round(frames * hop)
            out.append(({k: w[first:] for k, w in waves.items()}, seconds))
    return out


def copy_baseline(
    items: list[Item], space: AcousticSpace
) -> list[tuple[dict[str, np.ndarray], float]]:
    """The copy baseline: each target's reference clip, its speech latents time-stretched
    (linear interpolation) to the target's length and decoded the same way; no model. A
    dubber that does not beat it has learnt nothing from text, lips or labels."""
    out = []
    for it in items:
        assert it.ref is not None and it.ref_arrays is not None, "pair items first"
        ref = space.latents(dict(it.ref_arrays), "speech")  # ref: [r, c]
        n = space.latents(dict(it.arrays), "speech").shape[0]
        stretched = torch.nn.functional.interpolate(
            ref.T[None], size=n, mode="linear", align_corners=True
        )[0].T  # stretched: [n, c]
        wave = space.decode(stretched[None])[0].numpy().astype(np.float32)
        out.append(({"speech": wave}, 0.0))
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
    ev: Evaluator, item: Item, gen: np.ndarray, ref: np.ndarray, sr: int
) -> dict[str, MetricResult]:
    """Every metric in METRICS for the generated target clip against the target's speech;
    WER against the target's script."""
    n = min(len(gen), len(ref))
    g, r = gen[:n], ref[:n]
    if len(g) < sr // 10:
        return {k: not_available(k, "generated part shorter than 0.1 s") for k in METRICS}
    # video metrics apart: AV-Align and LSE read the target's crops
    out = ev(g, r, sr, text=item.meta.text or None)
    return {**out, **_video_metrics(ev, g, sr, item, 0)}


def _background(
    ev: Evaluator, item: Item, gen: np.ndarray, space: AcousticSpace
) -> dict[str, MetricResult]:
    """v2st's background stream against the record's background and the clip's frames."""
    ref = None
    if space.has(dict(item.arrays), "background"):
        latents = space.latents(dict(item.arrays), "background")[None]  # latents: [1, n, c]
        ref = space.decode(latents)[0].numpy().astype(np.float32)
    frames = _clip_frames(item.meta)
    return ev.background(gen, ref, space.sample_rate, video_frames=frames, fps=float(FPS))


def _clip_frames(meta: ClipRecord) -> np.ndarray | None:
    """The clip's full video frames at 25 fps (downscaled) from a local source, else None."""
    source = _local_file(meta.source)
    if source is None or meta.kind != "movie":
        return None
    try:
        info = probe(source)
        return decode_video(source, meta.start, meta.duration, info.width, info.height, 224)
    except MediaError:
        return None


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
    ev: Evaluator,
    items: list[Item],
    gens: list[tuple[dict[str, np.ndarray], float]],
    space: AcousticSpace,
    out: Path,
    samples: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per item: a metrics row for write_report and an info row (task, reference clip, target
    speech origin); the first `samples` items' audio goes to out/samples."""
    sr = space.sample_rate
    rows, infos = [], []
    for k, (item, (waves, prompt_s)) in enumerate(zip(items, gens, strict=True)):
        ref, origin = reference_speech(item.meta, item.arrays, space)
        metrics = score(ev, item, waves["speech"], ref, sr)
        if "background" in waves:
            metrics.update(_background(ev, item, waves["background"], space))
        rows.append({"sample": item.name, **metrics})
        assert item.ref is not None
        infos.append(
            {
                "sample": item.name,
                "key": item.meta.key,
                "task": item.task,
                "reference_clip": item.ref.key,
                "prompt_seconds": round(prompt_s, 3),
                "target_speech": origin,
                "seconds": len(waves["speech"]) / sr,
            }
        )
        if k < samples:
            _save(out / "samples", item.name, waves, ref, sr)
    return rows, infos


def evaluate_checkpoint(
    checkpoint: str | Path,
    shards: str | Path,
    out: str | Path,
    *,
    split: str = "val",
    protocol: Protocol = "setting2",
    clips: int = 8,
    nfe: int | None = 16,
    method: str | None = None,
    sway: float | None = None,
    guidance: Guidance | None | Literal["checkpoint"] = "checkpoint",
    vocoder: tuple[str, str | None] | None = None,
    eval_config: EvalConfig | None = None,
    samples: int = 3,
    seed: int = 0,
    batch_size: int = 4,
    device: str = "cpu",
    evaluator: Evaluator | None = None,
    pool_limit: int = 2000,
    generator: Literal["model", "copy"] = "model",
) -> dict[str, Any]:
    """Generate for up to `clips` held-out targets of `split` with the exported `checkpoint`,
    score them under `protocol` and write the report into `out`; returns the summary that
    out/evaluation.json holds.

    `nfe`, `method`, `sway`: sampler settings (None: the export's). `guidance`: a `Guidance`,
    None for no CFG, or "checkpoint" for the export's. `vocoder`: (kind, path) to decode mel
    with instead of the export's. `evaluator`: a prebuilt one (models loaded once across
    calls), else built from `eval_config`. `generator="copy"` scores the copy baseline
    (`copy_baseline`) instead of the model, on the same pairs."""
    if split == "train":
        raise ValueError("evaluation reads val or test clips, never train: the model saw them")
    if clips < 1 or samples < 0 or batch_size < 1:
        raise ValueError(f"clips={clips}, batch_size={batch_size} >= 1 and samples={samples} >= 0")
    ckpt = load_checkpoint(checkpoint, device=device)
    space = load_space(ckpt, device=device, vocoder=vocoder)
    pool, skipped = read_records(shard_paths(shards, split), split, pool_limit)
    items, not_evaluable = read_items(pool, space, tuple(ckpt.config.tasks), clips)
    speech_key = space.array_key("speech")
    pairs, unpaired = pair_references(
        pool, [(it.meta, it.arrays) for it in items], protocol, speech_key
    )
    by_key = {p.target.key: p for p in pairs}
    items = [
        dataclasses.replace(
            it, ref=by_key[it.meta.key].ref, ref_arrays=by_key[it.meta.key].ref_arrays
        )
        for it in items
        if it.meta.key in by_key
    ]
    skipped += not_evaluable + unpaired
    if not items:
        raise ValueError(
            f"no evaluable {split} clip in {shards} ({protocol}); skipped: {skipped[:3]}"
        )
    kw = _sampler(ckpt.config, nfe, guidance)
    kw.update({k: v for k, v in (("method", method), ("sway", sway)) if v is not None})
    if generator == "copy":
        gens = copy_baseline(items, space)
    else:
        gens = generate(
            ckpt.model, items, space, batch_size=batch_size, seed=seed, sample_kwargs=kw
        )
    ev = evaluator or Evaluator(eval_config)
    rows, infos = _score_items(ev, items, gens, space, Path(out), samples)
    paths = write_report(rows, out)
    summary = {
        "checkpoint": str(checkpoint),
        "shards": str(shards),
        "split": split,
        "protocol": protocol,
        "generator": generator,
        "space": ckpt.codec.get("space"),
        "vocoder": space_vocoder(space),
        "settings": {"clips": clips, "seed": seed, **{k: _plain(v) for k, v in kw.items()}},
        "samples": infos,
        "skipped": skipped,
        "metrics": summarize(rows),
        "outputs": {k: str(v) for k, v in paths.items()},
    }
    (Path(out) / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def space_vocoder(space: AcousticSpace) -> dict[str, Any]:
    """What turns the space's latents into audio, for the report: the mel vocoder (kind, path,
    whether it is the Griffin-Lim fallback) or the codec's decoder."""
    if isinstance(space, MelSpace):
        ref = space.vocoder_ref
        kind = ref.kind if ref else "griffin_lim"
        return {"kind": kind, "path": ref.path if ref else None, "fallback": space.fallback}
    return {"kind": "codec", "path": space.reference().get("path"), "fallback": False}


def main(cfg: EvaluateConfig) -> int:
    """Entrypoint of the evaluate job: evaluate, then print the metrics table."""
    guidance: Guidance | None | Literal["checkpoint"]
    if cfg.guidance == "checkpoint":
        guidance = "checkpoint"
    elif cfg.guidance == "none":
        guidance = None
    else:
        g = cfg.guidance
        guidance = Guidance(video=g.video, labels=g.labels, text=g.text)
    vocoder = (cfg.vocoder.kind, cfg.vocoder.path) if cfg.vocoder else None
    try:
        summary = evaluate_checkpoint(
            cfg.checkpoint,
            cfg.shards,
            cfg.out,
            split=cfg.split,
            protocol=cfg.protocol,
            clips=cfg.clips,
            nfe=cfg.nfe,
            method=cfg.method,
            sway=cfg.sway,
            guidance=guidance,
            vocoder=vocoder,
            eval_config=cfg.metrics,
            samples=cfg.samples,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            device=cfg.device,
        )
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from e
    print(
        Path(summary["outputs"]["markdown"]).read_text()
        if "markdown" in summary["outputs"]
        else json.dumps(summary["metrics"], indent=1)
    )
    print(
        f"protocol {cfg.protocol} on {cfg.split}; vocoder {summary['vocoder']}; report: {cfg.out}"
    )
    return 0
