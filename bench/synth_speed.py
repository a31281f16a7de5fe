"""Synthetic corpus speed: media seconds made per wall second, 1 worker vs N workers.

    .venv/bin/python bench/synth_speed.py [--movies 10] [--duration 30] [--workers 2]

Prints one line per run and the parallel speed-up (same machine, same run, so comparable).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from dubforge.synth.config import SynthConfig
from dubforge.synth.corpus import generate


def run(movies: int, duration: float, workers: int, out: str) -> float:
    cfg = SynthConfig(
        output=out, movies=movies, duration=duration, workers=workers, speech_utterances=0,
        overwrite=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    index = generate(cfg)
    wall = time.perf_counter() - t0
    per_movie = sorted(m["seconds"] for m in index["movies"])
    print(
        f"workers={workers}: {movies} x {duration:.0f} s movies in {wall:.1f} s wall "
        f"= {movies * duration / wall:.1f} media-s/s; "
        f"per movie {per_movie[0]:.1f}-{per_movie[-1]:.1f} s"
    )
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--movies", type=int, default=10)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(args.movies, args.duration, 1, f"{tmp}/w1")
        many = run(args.movies, args.duration, args.workers, f"{tmp}/wn")
    print(f"speed-up {args.workers} workers vs 1: {one / many:.2f}x")


if __name__ == "__main__":
    main()
