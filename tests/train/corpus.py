"""Small learnable training shards in the ingest's format, written with the ingest's ShardWriter.

Shards sit in split folders as ingest writes them: `train/movies/clip-NNNNN.tar` (speech +
background log-mels in the vocos_24k profile, lips, face crops) and `train/speech/spk-NNNNN.tar`
(speech only), plus one small shard of each under `val/`. The mels follow patterns set by the text
and labels (a per-utterance sinusoid over bins and time, a per-emotion offset), so a model can
learn them in a few steps; the lips open with the speech envelope.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from dubforge.ingest.shards import Sample, ShardWriter
from dubforge.schema import MEL_PROFILES, ClipRecord, CodecInfo, tasks_for_arrays

EMOTIONS = ("neutral", "happy", "sad", "angry")


PROFILE = MEL_PROFILES["vocos_24k"]


def make_clip(key: str, seconds: float, text: str, rng: np.random.Generator, video: bool,
              emotion: str = "neutral", split: str = "train") -> Sample:  # fmt: skip
    rate = PROFILE.frame_rate
    t_mel, frames = round(seconds * rate), round(seconds * 25)
    phase = (zlib.crc32(text.encode()) % 1000) / 1000
    bins = np.arange(PROFILE.n_mels)[:, None] / PROFILE.n_mels
    t = np.arange(t_mel)[None, :] / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (2.0 * t + phase))  # syllable-like, 2 Hz
    offset = EMOTIONS.index(emotion) * 0.5
    speech = -6 + offset + 3 * envelope * np.cos(2 * np.pi * (3 * bins + phase))
    speech += rng.normal(0, 0.2, speech.shape)
    labels = {"scene_type": "monologue" if video else "unknown", "gender": "female",
              "age": "adult", "emotion": emotion}  # fmt: skip
    arrays: dict[str, np.ndarray] = {"speech.mel": speech.astype(np.float16)}
    if video:
        bg = -8 + 2 * np.cos(2 * np.pi * (bins + 0.5 * t)) + rng.normal(0, 0.2, speech.shape)
        arrays["bg.mel"] = bg.astype(np.float16)
        idx = np.minimum((np.arange(frames) * rate / 25).astype(int), t_mel - 1)
        opening = envelope[0, idx]  # mel rate -> 25 fps
        lips = np.zeros((frames, 96, 96), dtype=np.uint8)
        for i, o in enumerate(opening):
            h = int(8 + 30 * o)
            lips[i, 48 - h // 2 : 48 + h // 2, 24:72] = 200
        arrays["lips"] = lips
        arrays["face"] = rng.integers(0, 256, (round(seconds * 5), 32, 32, 3), dtype=np.uint8)
    record = ClipRecord(
        key=key, movie_id=key.split("/")[0], split=split, source=f"synthetic:{key}",
        kind="movie" if video else "speech", start=0.0, end=seconds, text=text, transcribed=True,
        codec=CodecInfo("encodec", 24000, 75.0, 8, "none", random_weights=True),
        tasks=tasks_for_arrays(arrays, "mel"), mel_profile=PROFILE.name, labels=labels,
        speaker=key.split("/")[0], face_coverage=1.0 if video else None,
        face_fps=5 if video else None,
    )  # fmt: skip
    record.check_arrays(arrays)
    return Sample(key, record.to_dict(), arrays)


def make_shards(root: Path, movies: int = 12, speech: int = 12, per_shard: int = 4,
                seed: int = 0, val: int = 2) -> Path:  # fmt: skip
    """Write `movies` movie clips and `speech` speech clips under root/train/{movies,speech},
    and `val` of each (other movies and speakers) under root/val/{movies,speech}."""
    rng = np.random.default_rng(seed)
    words = ["the", "night", "is", "dark", "and", "full", "of", "voices", "come", "home"]
    for split, m, s in (("train", movies, speech), ("val", val, val)):
        for kind, n, video in (("movies", m, True), ("speech", s, False)):
            if not n:
                continue
            writer = ShardWriter(root / split / kind, "clip" if video else "spk", 1 << 30,
                                 per_shard)  # fmt: skip
            for i in range(n):
                text = " ".join(rng.choice(words, size=int(rng.integers(3, 6))))
                seconds = float(rng.choice([1.0, 1.2, 1.6, 2.0]))
                emotion = EMOTIONS[i % len(EMOTIONS)]
                key = f"{split[0]}{kind[:5]}{i:03d}/{i:05d}"
                writer.write(make_clip(key, seconds, text, rng, video, emotion, split))
            writer.close()
    return root
