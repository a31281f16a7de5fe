"""Does the dubber learn? Train on the synthetic corpus, then score held-out clips the way the
papers do (setting 2 on `val`, real pretrained HiFi-GAN V1 in the hifigan_22k profile).

    .venv/bin/python bench/learn_synth.py                          # tiny + small, defaults
    .venv/bin/python bench/learn_synth.py --presets tiny --movies 12 --steps-scale 2 --clips 12

Steps: `dubforge synth` (--movies movies) -> ingest (every round(1/--val)-th movie and speaker
pinned to `val`) -> for each preset, the debug curriculum (4 stages, tts -> v2a -> v2a_tts ->
v2st) with every stage's steps multiplied by --steps-scale -> evaluation of the same `val`
targets and reference pairs for:
  (a) untrained: the preset at random init, exported in the same space;
  (b) copy: the reference clip's speech stretched to the target's length (no model);
  (c) trained, no guidance;
  (d) trained with eq. 9 guidance at the --scales settings (equal scales; plus one unequal).
Prints one table of MCD-DTW, MCD-DTW-SL, onset / offset error (ms), AV-Align, SECS, DNSMOS
OVRL per variant, and the goal from the issue (trained+guided beats copy on sync error and MCD,
speech onset/offset error < 40 ms) as MET/MISSED. Everything goes under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COLUMNS = (
    ("mcd_dtw", "MCD", 2),
    ("mcd_dtw_sl", "MCD-SL", 2),
    ("sync_onset_error", "onset ms", 0),
    ("sync_offset_error", "offset ms", 0),
    ("av_align", "AV-Align", 3),
    ("secs", "SECS", 3),
    ("dnsmos_ovrl", "DNSMOS", 2),
)


def make_data(out: Path, movies: int, val: float, seed: int) -> Path:
    """Synthetic corpus -> ingest with `val` of the movies and speakers held out; returns the
    shards/ folder."""
    from dubforge.ingest.config import IngestConfig
    from dubforge.ingest.pipeline import run as ingest
    from dubforge.ingest.tokenize import save_random_codec
    from dubforge.synth.config import SynthConfig
    from dubforge.synth.corpus import generate

    corpus, shards = out / "corpus", out / "ingest"
    if not (corpus / "movies").is_dir():
        generate(
            SynthConfig(
                output=str(corpus),
                movies=movies,
                seed=seed,
                duration=30.0,
                scene_seconds=15.0,
                speech_utterances=8 * max(1, movies // 4),
                speech_speakers=max(2, movies // 4),
            )
        )
    codec = out / "encodec_random"
    if not (codec / "config.json").is_file():
        save_random_codec(codec)
    # every k-th movie and speaker held out: a hash split of a few dozen ids can leave val
    # nearly empty (16 movies at 0.3 gave 3 val clips), and setting 2 needs two clips a speaker
    every = max(2, round(1 / val))
    held = [f"movie_{i:03d}" for i in range(0, movies, every)]
    held += [f"reader_{k:02d}" for k in range(0, max(2, movies // 4), every)]
    cfg = IngestConfig(
        input=[str(corpus / "movies"), str(corpus / "speech")],
        output=str(shards),
        codec={"name_or_path": str(codec), "mel": "hifigan_22k"},
        split={"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}, "pinned": {"val": held}},
    )
    summary = ingest(cfg)
    print(f"ingest: clips by split {summary['clips_by_split']}")
    return shards / "shards"


def train(out: Path, shards: Path, preset: str, scale: float, vocoder: str) -> Path:
    """The debug curriculum at `preset`, steps x `scale`; returns the last stage's export."""
    import yaml

    from dubforge.config import build
    from dubforge.train.config import CurriculumConfig
    from dubforge.train.curriculum import main

    data = yaml.safe_load((REPO / "jobs" / "curriculum_debug.yaml").read_text())
    for stage in data["stages"]:
        stage["steps"] = max(1, round(stage["steps"] * scale))
    data.update(name=f"learn-{preset}", shards=str(shards), storage=str(out / "train"))
    data["model"].update(
        preset=preset,
        space={"name": "mel", "mel_profile": "hifigan_22k", "vocoder": "hifigan", "path": vocoder},
    )
    data["tracking"]["validate_every"] = 10**6
    export = out / "train" / f"learn-{preset}" / "exports" / "v2st"
    if not (export / "config.json").is_file():
        main(build(CurriculumConfig, data, "bench/learn_synth.py"))
    return export


def untrained_export(out: Path, trained: Path, seed: int) -> Path:
    """The trained export's architecture and space at random init."""
    import torch

    from dubforge.model.checkpoint import load_checkpoint, load_space, save_checkpoint
    from dubforge.model.presets import build_model

    ckpt = load_checkpoint(trained)
    space = load_space(ckpt)
    torch.manual_seed(seed)
    return save_checkpoint(out, build_model(ckpt.config, space), ckpt.config, space, stage="init")


def _row(name: str, summary: dict[str, Any], seconds: float) -> dict[str, Any]:
    m = summary["metrics"]
    row = {"variant": name, "n": m["mcd_dtw"]["count"], "seconds": round(seconds, 1)}
    for key, _, _ in COLUMNS:
        value = m.get(key, {}).get("mean")
        if value is not None and key.startswith("sync_"):
            value *= 1000.0  # s -> ms
        row[key] = value
    return row


def evaluate_all(out: Path, shards: Path, preset: str, export: Path, args: Any) -> list[dict]:
    from dubforge.eval.config import EvalConfig
    from dubforge.eval.evaluate import Evaluator
    from dubforge.eval.run import evaluate_checkpoint
    from dubforge.model.flow import Guidance

    ev = Evaluator(EvalConfig())
    common = {
        "split": "val",
        "protocol": "setting2",
        "clips": args.clips,
        "nfe": args.nfe,
        "evaluator": ev,
        "samples": 2,
        "seed": 0,
    }
    variants: list[tuple[str, Path, dict[str, Any]]] = [
        ("untrained", untrained_export(out / f"{preset}-init", export, 0), {"guidance": None}),
        ("copy", export, {"generator": "copy"}),
        ("trained, no CFG", export, {"guidance": None}),
    ]
    for s in args.scales:
        variants.append((f"trained, CFG {s:g}", export, {"guidance": Guidance(s, s, s)}))
    variants.append(("trained, CFG 3/2/1.5", export, {"guidance": Guidance(3.0, 2.0, 1.5)}))
    rows = []
    for name, ckpt, kw in variants:
        t0 = time.perf_counter()
        folder = out / "eval" / preset / name.replace(" ", "_").replace(",", "").replace("/", "-")
        summary = evaluate_checkpoint(ckpt, shards, folder, **common, **kw)
        rows.append(_row(f"{preset}: {name}", summary, time.perf_counter() - t0))
        print(f"  {rows[-1]['variant']}: done in {rows[-1]['seconds']} s", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ["variant", "n"] + [label for _, label, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"], str(r["n"])]
        for key, _, digits in COLUMNS:
            v = r[key]
            cells.append("n/a" if v is None else f"{v:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]], preset: str) -> list[str]:
    """The issue's goal for the preset: best guided run vs copy, and onset/offset < 40 ms."""
    mine = [r for r in rows if r["variant"].startswith(f"{preset}: trained, CFG")]
    copy = next(r for r in rows if r["variant"] == f"{preset}: copy")
    if not mine or copy["mcd_dtw"] is None:
        return [f"{preset}: nothing to compare"]
    best = min(mine, key=lambda r: r["mcd_dtw"] if r["mcd_dtw"] is not None else 1e9)

    def sync(r: dict[str, Any]) -> float:
        return (r["sync_onset_error"] or 1e9) + (r["sync_offset_error"] or 1e9)

    goals = [
        ("MCD below copy", best["mcd_dtw"] < copy["mcd_dtw"]),
        ("sync error below copy", sync(best) < sync(copy)),
        (
            "onset and offset error < 40 ms",
            (best["sync_onset_error"] or 1e9) < 40 and (best["sync_offset_error"] or 1e9) < 40,
        ),
    ]
    return [f"{preset} ({best['variant']}): {g}: {'MET' if ok else 'MISSED'}" for g, ok in goals]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench" / "learn_synth")
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--movies", type=int, default=24)
    p.add_argument("--val", type=float, default=0.3, help="share of movies/speakers held out")
    p.add_argument("--steps-scale", type=float, default=5.0, help="x the debug curriculum steps")
    p.add_argument("--clips", type=int, default=20, help="val targets scored")
    p.add_argument("--nfe", type=int, default=16)
    p.add_argument("--scales", type=float, nargs="+", default=[1.5, 2.5])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DUBFORGE_WORKSPACE", str(args.out / "workspace"))
    from dubforge.model.vocoders import bundled_hifigan

    vocoder = str(bundled_hifigan())
    t0 = time.perf_counter()
    shards = make_data(args.out, args.movies, args.val, args.seed)
    rows = []
    for preset in args.presets:
        t1 = time.perf_counter()
        export = train(args.out, shards, preset, args.steps_scale, vocoder)
        print(f"{preset}: trained in {time.perf_counter() - t1:.0f} s -> {export}", flush=True)
        rows += evaluate_all(args.out, shards, preset, export, args)
    print(table(rows))
    for preset in args.presets:
        print("\n".join(verdict(rows, preset)))
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"total {time.perf_counter() - t0:.0f} s; results in {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
