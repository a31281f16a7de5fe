"""Small learnable training shards in the ingest's format, written with the ingest's ShardWriter.

Movie clips (`movies/clip-NNNNN.tar`) carry speech + background log-mels, lips and face crops;
speech-corpus clips (`speech/spk-NNNNN.tar`) speech only. The mels follow patterns set by the text
and labels (a per-utterance sinusoid over bins and time, a per-emotion offset), so a model can
learn them in a few steps; the lips open with the speech envelope.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from dubforge.ingest.records import SCHEMA_VERSION
from dubforge.ingest.shards import Sample, ShardWriter

EMOTIONS = ("neutral", "happy", "sad", "angry")


def make_clip(key: str, seconds: float, text: str, rng: np.random.Generator, video: bool,
              emotion: str = "neutral") -> Sample:  # fmt: skip
    t_mel, frames = round(seconds * 100), round(seconds * 25)
    phase = (zlib.crc32(text.encode()) % 1000) / 1000
    bins = np.arange(100)[:, None] / 100
    t = np.arange(t_mel)[None, :] / 100
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (2.0 * t + phase))  # syllable-like, 2 Hz
    offset = EMOTIONS.index(emotion) * 0.5
    speech = -6 + offset + 3 * envelope * np.cos(2 * np.pi * (3 * bins + phase))
    speech += rng.normal(0, 0.2, speech.shape)
    meta = {
        "schema_version": SCHEMA_VERSION, "key": key, "movie_id": key.split("/")[0],
        "start": 0.0, "end": seconds, "text": text, "transcribed": True, "fps": 25,
        "labels": {"scene_type": "monologue" if video else "unknown", "gender": "female",
                   "age": "adult", "emotion": emotion},
        "speaker": key.split("/")[0], "face_coverage": 1.0 if video else None,
    }  # fmt: skip
    arrays: dict[str, np.ndarray] = {"speech.mel": speech.astype(np.float16)}
    if video:
        bg = -8 + 2 * np.cos(2 * np.pi * (bins + 0.5 * t)) + rng.normal(0, 0.2, speech.shape)
        arrays["bg.mel"] = bg.astype(np.float16)
        opening = envelope[0, ::4][:frames]  # 100 Hz -> 25 fps
        lips = np.zeros((frames, 96, 96), dtype=np.uint8)
        for i, o in enumerate(opening):
            h = int(8 + 30 * o)
            lips[i, 48 - h // 2 : 48 + h // 2, 24:72] = 200
        arrays["lips"] = lips
        arrays["face"] = rng.integers(0, 256, (round(seconds * 5), 32, 32, 3), dtype=np.uint8)
        meta["face_fps"] = 5
    return Sample(key, meta, arrays)


def make_shards(root: Path, movies: int = 12, speech: int = 12, per_shard: int = 4,
                seed: int = 0) -> Path:  # fmt: skip
    """Write `movies` movie clips and `speech` speech clips under root/{movies,speech}."""
    rng = np.random.default_rng(seed)
    words = ["the", "night", "is", "dark", "and", "full", "of", "voices", "come", "home"]
    for kind, n, video in (("movies", movies, True), ("speech", speech, False)):
        writer = ShardWriter(root / kind, "clip" if video else "spk", 1 << 30, per_shard)
        for i in range(n):
            text = " ".join(rng.choice(words, size=int(rng.integers(3, 6))))
            seconds = float(rng.choice([1.0, 1.2, 1.6, 2.0]))
            emotion = EMOTIONS[i % len(EMOTIONS)]
            writer.write(make_clip(f"{kind[:5]}{i:03d}/{i:05d}", seconds, text, rng, video,
                                   emotion))  # fmt: skip
        writer.close()
    return root
