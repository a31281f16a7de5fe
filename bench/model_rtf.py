"""Dubber generation speed: real-time factor per preset, NFE and guidance; CFG step-time ratio.

    .venv/bin/python bench/model_rtf.py [--preset tiny small] [--seconds 10] [--nfe 8 16 32]
    .venv/bin/python bench/model_rtf.py --device cuda --preset base --dtype bf16

RTF = generation wall time / audio duration, for one v2s clip in the mel space (vocos_24k
latents, 93.75 Hz; lips, face, labels, text, a reference prefix of 25 %); condition encoders
included, vocoder excluded (Griffin-Lim timed on its own line). "cfg/plain step" is the time of
one packed guided DiT forward (the eq. 9 branches the default scales need: 2 when they are
equal) over one unguided forward: ONE batched forward of k x the batch, so it stays below k
when batching pays. Peak memory: RSS high-water mark of the
process (CPU) or torch's peak allocation (CUDA). Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from dubforge.ingest.records import SCHEMA_VERSION
from dubforge.model.batch import Batch, collate
from dubforge.model.flow import Guidance, cfg_branches, cfg_terms
from dubforge.model.presets import PRESETS
from dubforge.model.spaces import MelSpace


def clip_batch(seconds: float, space: MelSpace, device: str) -> Batch:
    """One synthetic v2s clip of `seconds` with video, labels, text and a 25 % reference."""
    rng = np.random.default_rng(0)
    n, f = round(seconds * space.frame_rate), round(seconds * 25)
    meta = {
        "schema_version": SCHEMA_VERSION, "key": "bench/00000", "start": 0.0, "end": seconds,
        "text": "the quick brown fox jumps over the lazy dog " * max(1, round(seconds / 3)),
        "fps": 25, "labels": {"scene_type": "dialogue", "gender": "male", "emotion": "calm"},
        "ref_frames": n // 4,
    }  # fmt: skip
    arrays = {
        "speech.mel": rng.normal(-5, 2, (100, n)).astype(np.float16),
        "lips": rng.integers(0, 256, (f, 96, 96), dtype=np.uint8),
        "face": rng.integers(0, 256, (round(seconds * 5), 224, 224, 3), dtype=np.uint8),
    }
    return collate([(meta, arrays)], space, tasks="v2s", train=False).to(device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, repeats: int = 1) -> float:
    """Mean wall seconds of fn() over `repeats` calls."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def peak_memory_mb(device: str) -> float:
    """Peak CUDA allocation, or the process's RSS high-water mark (Linux reports KiB)."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def precision(device: str, dtype: str) -> Iterator[None]:
    """bf16 autocast (weights stay fp32) or nothing."""
    if dtype == "bf16":
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            yield
    else:
        yield


def step_ratio(model: torch.nn.Module, batch: Batch, device: str, repeats: int) -> float:
    """Seconds of one packed forward of the branches eq. 9 needs at the default guidance (two
    when the three scales are equal, four otherwise) / one unguided forward."""
    with torch.no_grad():
        conds, _ = model.encode_conditions(batch)
        branches = [i for i, _ in cfg_terms(Guidance())]
        packed = cfg_branches(conds, branches)
        k = len(branches)
        x = torch.randn(batch.latents.shape, device=device)
        t = torch.full((1,), 0.5, device=device)

        def plain() -> object:
            return model.velocity(x, t, conds)

        def guided() -> object:
            return model.velocity(x.repeat(k, 1, 1, 1), t.repeat(k), packed)

        plain(), guided()  # warm-up
        return timed(guided, device, repeats) / timed(plain, device, repeats)


def bench_preset(name: str, args: argparse.Namespace) -> None:
    space = MelSpace()
    torch.manual_seed(0)
    model = PRESETS[name](latent_dim=space.latent_dim, video_ratio=space.video_ratio)
    model = model.to(args.device).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    batch = clip_batch(args.seconds, space, args.device)
    print(f"\n{name}: {params:.1f} M params, {args.seconds:g} s clip = {batch.latents.shape[2]} "
          f"frames, {args.device} {args.dtype}, {torch.get_num_threads()} threads")  # fmt: skip
    with precision(args.device, args.dtype):
        model.sample(batch, nfe=2, cfg=Guidance(), seed=0)  # warm-up
        ratio = step_ratio(model, batch, args.device, args.repeats)
        print(f"  cfg/plain step time: {ratio:.2f}x (4 branches in one batched forward)")
        for nfe in args.nfe:
            row = []
            for cfg in (None, Guidance()):
                wall = timed(lambda c=cfg, k=nfe: model.sample(batch, nfe=k, cfg=c), args.device)
                row.append(
                    f"{'cfg' if cfg else 'plain'} RTF {wall / args.seconds:7.3f} ({wall:6.2f} s)"
                )
            print(f"  NFE {nfe:>3}: " + "   ".join(row))
    print(f"  peak memory: {peak_memory_mb(args.device):.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", nargs="+", default=["tiny", "small"], choices=sorted(PRESETS))
    p.add_argument("--seconds", type=float, default=10.0, help="clip length")
    p.add_argument("--nfe", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=3, help="forwards per step-time measurement")
    p.add_argument("--vocoder", action="store_true", help="also time Griffin-Lim (32 iters)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    for name in args.preset:
        bench_preset(name, args)
    if args.vocoder:
        mel = torch.full((1, round(args.seconds * 100), 100), -5.0)
        wall = timed(lambda: MelSpace().decode(mel), "cpu")
        print(f"\nGriffin-Lim (32 iters, CPU): {wall / args.seconds:.3f} RTF ({wall:.2f} s)")


if __name__ == "__main__":
    main()
