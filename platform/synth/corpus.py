"""Generate the whole synthetic corpus: movies in parallel processes, then the speech corpus.

Layout under the output folder:
  movies/    <id>.mp4 + <id>.srt (one movie ships a .vtt instead) + <id>.labels.json
  truth/     <id>/{speech,background,mix}.wav + alignment.json; speech_alignment.jsonl
  speech/    <speaker>/<utt>.wav + <utt>.txt, metadata.csv (`path|speaker|text`, paths
             relative to speech/)
  corpus.json  the config, per-movie counts and timings; `.completed` marks a finished corpus
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from dubforge import storage
from dubforge.synth.config import SynthConfig
from dubforge.synth.movie import write_movie
from dubforge.synth.script import draw_speaker, sentence
from dubforge.synth.tts import espeak

TRUTH_VERSION = 1
VTT_MOVIE = 1  # this movie's subtitles are WebVTT; all others SubRip


def config_digest(cfg: SynthConfig) -> str:
    """Hash of everything that changes the corpus' content (not where or how fast it is made)."""
    content = cfg.model_dump(exclude={"output", "workers", "overwrite"})
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _movie_task(index: int, cfg: SynthConfig, root: str) -> dict:
    import cv2

    from dubforge.synth.script import plan_movie

    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads only contend
    t0 = time.perf_counter()
    plan, speech = plan_movie(index, cfg.seed, cfg.duration, cfg.scene_seconds)
    entry = write_movie(plan, speech, Path(root), cfg.crf, vtt=index == VTT_MOVIE, stems=cfg.stems)
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    return entry


def _speaker_task(k: int, count: int, cfg: SynthConfig, root: str) -> list[dict]:
    """`count` utterances of speech-corpus speaker k: wav + transcript + word timings."""
    rng = np.random.default_rng([cfg.seed, 100_000 + k])
    spk = draw_speaker(rng, f"reader_{k:02d}", None)
    folder = Path(root) / "speech" / spk.id
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for u in range(count):
        text = sentence(rng)
        utt = espeak().synthesize(text, spk.voice, spk.rate + int(rng.integers(-15, 16)), spk.pitch)
        gain = 10 ** (float(rng.uniform(-24, -16)) / 20) / max(
            float(np.sqrt(np.mean(utt.wave**2))), 1e-9
        )
        name = f"{spk.id}_{u:04d}"
        sf.write(
            folder / f"{name}.wav",
            np.clip(utt.wave * gain, -1, 1),
            utt.sample_rate,
            subtype="PCM_16",
        )
        (folder / f"{name}.txt").write_text(text + "\n")
        rows.append(
            {
                "path": f"speech/{spk.id}/{name}.wav",
                "speaker": spk.id,
                "gender": spk.gender,
                "text": text,
                "sample_rate": utt.sample_rate,
                "words": [[w.text, w.start, w.end] for w in utt.words],
            }
        )
    return rows


def _fresh_process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool that runs every task in a new process.

    espeak-ng keeps state between utterances in a process (the same text comes out a few samples
    different the second time), so a movie is deterministic only if its lines are the first
    things its process speaks. A forkserver with the heavy modules preloaded makes each new
    process cheap.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["dubforge.synth.movie", "dubforge.synth.script", "cv2", "scipy.signal"]
    )
    return ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1)


def generate(cfg: SynthConfig) -> dict:
    """Write the corpus described by `cfg`; returns the corpus index (also saved as corpus.json)."""
    digest = config_digest(cfg)
    done_marker = f"{cfg.output.rstrip('/')}/.completed"
    if (
        not cfg.overwrite
        and storage.exists(done_marker)
        and storage.read_text(done_marker).strip() == digest
    ):
        return json.loads(storage.read_text(f"{cfg.output.rstrip('/')}/corpus.json"))
    t0 = time.perf_counter()
    with storage.output_dir(cfg.output) as root:
        (root / ".completed").unlink(missing_ok=True)
        per_speaker = np.diff(
            np.linspace(0, cfg.speech_utterances, cfg.speech_speakers + 1).astype(int)
        )
        with _fresh_process_pool(cfg.workers) as pool:
            movies = [pool.submit(_movie_task, i, cfg, str(root)) for i in range(cfg.movies)]
            readers = [
                pool.submit(_speaker_task, k, int(n), cfg, str(root))
                for k, n in enumerate(per_speaker)
                if n
            ]
            entries = [f.result() for f in movies]
            rows = [row for f in readers for row in f.result()]
        _write_speech_index(root, rows)
        index = {
            "schema_version": TRUTH_VERSION,
            "config": cfg.model_dump(),
            "digest": digest,
            "movies": [_plain(e) for e in entries],
            "speech_utterances": len(rows),
            "totals": {
                "movies": len(entries),
                "lines": sum(e["lines"] for e in entries),
                "movie_seconds": cfg.movies * cfg.duration,
                "speech_seconds": round(sum(r["words"][-1][2] for r in rows if r["words"]), 1),
                "wall_seconds": round(time.perf_counter() - t0, 2),
            },
        }
        (root / "corpus.json").write_text(json.dumps(index, indent=1))
        (root / ".completed").write_text(digest + "\n")
    return index


def _write_speech_index(root: Path, rows: list[dict]) -> None:
    (root / "speech").mkdir(exist_ok=True)
    # paths relative to the csv, as speech corpora ship them
    lines = ["path|speaker|text"] + [
        f"{r['path'].removeprefix('speech/')}|{r['speaker']}|{r['text']}" for r in rows
    ]
    (root / "speech" / "metadata.csv").write_text("\n".join(lines) + "\n")
    (root / "truth").mkdir(exist_ok=True)
    with open(root / "truth" / "speech_alignment.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _plain(entry: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in entry.items()}


def main(cfg: SynthConfig) -> int:
    """Entrypoint of the synth job: generate, then print a one-line summary per movie."""
    index = generate(cfg)
    for m in index["movies"]:
        print(
            f"{m['movie_id']}: {m['lines']} lines, scenes {'+'.join(m['scene_types'])}, "
            f"{m['low_background_lines']} low-background, {m['quiet_speech_lines']} quiet-speech"
        )
    t = index["totals"]
    print(
        f"corpus: {t['movies']} movies ({t['movie_seconds']:.0f} s), {t['lines']} lines, "
        f"{index['speech_utterances']} speech utterances ({t['speech_seconds']:.0f} s) "
        f"-> {cfg.output} in {t['wall_seconds']:.1f} s"
    )
    return 0
