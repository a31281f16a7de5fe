"""Training speed of one worker on its device: samples/s, latent frames/s and model FLOPs
utilisation (MFU) against the device's bf16 matmul peak, measured here.

    .venv/bin/python bench/train_mfu.py --device cuda --preset base --dtype bf16 --steps 300
    .venv/bin/python bench/train_mfu.py --device cpu --preset tiny --steps 3  # a smoke check

What is timed is the worker's training step without the data path and without DeepSpeed: the
preset's Dubber (random init, mel space), fp32 weights under bf16 autocast (as DeepSpeed's bf16
forward computes in bf16), `model.loss` + backward + gradient clip 1.0 + torch's AdamW (fused on
CUDA, as the curriculum's DeepSpeed config asks for on GPU). Batches are frame-budget
micro-batches made by the curriculum's own `FrameBatcher` (`--frame-budget`, `--max-samples`,
`--tasks`) from synthetic clips of `--min-seconds`..`--max-seconds`, collated once and kept on the
device (`--pool` distinct ones, cycled), so data loading never stalls the step: the numbers are
the model's ceiling, which `bench/train_speed.py` compares the full path against.

Model FLOPs (`dit_train_flops`, the formula is written there) count the DiT blocks only, per real
(unpadded) token, with training = 3 x forward; recomputation under activation checkpointing is
not counted (model, not hardware, FLOPs; PaLM's MFU). The condition encoders and the DiT's input
and output projections are left out, so the MFU is a slight underestimate. Peak = the best of a
few timed square bf16 matmuls (`matmul_peak`), 2 n^3 FLOPs each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import time
from collections.abc import Sequence

import numpy as np
import torch

from dubforge.model.batch import TASK_STREAMS, Batch, collate
from dubforge.model.presets import PRESETS
from dubforge.model.spaces import MelSpace
from dubforge.schema import ClipRecord, CodecInfo, tasks_for_arrays
from dubforge.train.config import DataSection
from dubforge.train.data import DataCounters, FrameBatcher, Item, micro_batches

WORDS = ("the", "night", "is", "dark", "and", "full", "of", "voices", "come", "home")


MFU_TARGET = 0.40  # issue: base preset, bf16, ZeRO-2, against the measured matmul peak


def synthetic_row(i: int, seconds: float, space: MelSpace, rng: np.random.Generator) -> dict:
    """One decoded row (the columns `decode_rows` produces) of a movie clip with speech and
    background mels, lips and face crops."""
    n, f = round(seconds * space.frame_rate), round(seconds * 25)
    arrays = {
        "speech.mel": rng.normal(-5, 2, (space.latent_dim, n)).astype(np.float16),
        "bg.mel": rng.normal(-8, 2, (space.latent_dim, n)).astype(np.float16),
        "lips": rng.integers(0, 256, (f, 96, 96), dtype=np.uint8),
        "face": rng.integers(0, 256, (max(1, round(seconds * 5)), 112, 112, 3), dtype=np.uint8),
    }
    key = f"bench{i:05d}/{i:05d}"
    record = ClipRecord(
        key=key,
        movie_id=key.split("/")[0],
        split="train",
        source=f"synthetic:{key}",
        kind="movie",
        start=0.0,
        end=seconds,
        text=" ".join(rng.choice(WORDS, size=max(2, round(seconds * 2.5)))),
        transcribed=True,
        codec=CodecInfo("encodec", 24000, 75.0, 8, "none", random_weights=True),
        tasks=tasks_for_arrays(arrays, "mel"),
        mel_profile=space.profile.name,
        labels={"scene_type": "dialogue", "gender": "male", "age": "adult", "emotion": "calm"},
        speaker=key.split("/")[0],
        face_coverage=1.0,
        face_fps=5,
    )
    meta = json.dumps(record.to_dict())
    return {
        "key": key,
        "url": "synthetic",
        "frames": n,
        "meta": meta,
        "arrays": pickle.dumps(arrays, protocol=5),
        "error": "",
    }


def make_pool(args: argparse.Namespace, space: MelSpace) -> list[tuple[list[Item], Batch]]:
    """`args.pool` full frame-budget micro-batches, collated and on the device."""
    rng = np.random.default_rng(0)
    tasks = dict(
        (t.split(":")[0], float(t.split(":")[1]) if ":" in t else 1.0)
        for t in args.tasks.split(",")
    )
    data = DataSection(frame_budget=args.frame_budget, max_samples=args.max_samples)
    batcher = FrameBatcher(space, tasks, data, rng, DataCounters())
    rows = (
        synthetic_row(i, float(rng.uniform(args.min_seconds, args.max_seconds)), space, rng)
        for i in itertools.count()
    )
    pool = []
    for items in micro_batches(rows, batcher):
        batch = collate(
            [it.record for it in items],
            space,
            tasks=[it.task for it in items],
            train=True,
            seed=rng,
        )
        pool.append((items, batch.to(args.device)))
        if len(pool) == args.pool:
            return pool
    raise RuntimeError("the synthetic rows ran out")  # rows are endless: never reached


def dit_train_flops(
    lengths: Sequence[int], context: int, *, dim: int, depth: int, ff_hidden: int
) -> float:
    """Model FLOPs of one training step of the DiT blocks over samples of `lengths` tokens
    (frames x the task's streams) with `context` cross-attention tokens each.

    Multiply-accumulates per block and token of a sample with L tokens, d = dim, C = context:
        self-attention q, k, v, out projections   4 d^2
        self-attention scores and weighted sum    2 L d
        cross-attention q, out projections        2 d^2
        cross-attention scores and weighted sum   2 C d
        feed-forward (d -> ff_hidden -> d)        2 d ff_hidden
    and per block and sample the cross-attention k, v of its context tokens: 2 C d^2.
    FLOPs = 2 x MACs; one training step = 3 x the forward (the backward is twice the forward).
    """
    d, c = dim, context
    macs = 0.0
    for n in lengths:
        per_token = 6 * d * d + 2 * n * d + 2 * c * d + 2 * d * ff_hidden
        macs += depth * (n * per_token + 2 * c * d * d)
    return 3 * 2 * macs


def matmul_peak(device: str, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """The best FLOP/s of `repeats` square n x n matmuls (2 n^3 FLOPs each), over 3 tries."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(4):  # the first try warms up (kernel selection, clocks)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - t0))
    return best


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="base", choices=sorted(PRESETS))
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=300, help="measured optimizer steps")
    p.add_argument("--warmup", type=int, default=None, help="steps before timing (default 10%%)")
    p.add_argument("--frame-budget", type=int, default=DataSection().frame_budget)
    p.add_argument("--max-samples", type=int, default=DataSection().max_samples)
    p.add_argument("--tasks", default="v2st", help="task mix, e.g. v2st or v2st:2,v2s:1")
    p.add_argument("--min-seconds", type=float, default=2.0, help="shortest clip (cpu: 0.5)")
    p.add_argument("--max-seconds", type=float, default=12.0, help="longest clip (cpu: 2)")
    p.add_argument("--pool", type=int, default=8, help="distinct micro-batches, cycled")
    p.add_argument("--peak-n", type=int, default=None, help="matmul size (8192 cuda, 1024 cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":  # the GPU sizes would take hours of CPU per step
        if args.frame_budget == DataSection().frame_budget:
            args.frame_budget = 800
        if (args.min_seconds, args.max_seconds) == (2.0, 12.0):
            args.min_seconds, args.max_seconds = 0.5, 2.0
    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 10)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    space = MelSpace()
    torch.manual_seed(0)
    model = PRESETS[args.preset](latent_dim=space.latent_dim, video_ratio=space.video_ratio)
    model = model.to(args.device).train()
    params = sum(q.numel() for q in model.parameters())
    fused = {"fused": True} if args.device == "cuda" else {}
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.01, **fused
    )
    pool = make_pool(args, space)
    block = model.dit.blocks[0]
    shape = {
        "dim": block.attn.q.in_features,
        "depth": len(model.dit.blocks),
        "ff_hidden": block.ff.net[0].out_features,
    }
    with torch.no_grad():
        contexts = [model.encode_conditions(b)[0].tokens.shape[1] for _, b in pool]
    flops = [
        dit_train_flops([it.frames * len(TASK_STREAMS[it.task]) for it in items], c, **shape)
        for (items, _), c in zip(pool, contexts, strict=True)
    ]
    samples = [len(items) for items, _ in pool]
    frames = [sum(it.frames * len(TASK_STREAMS[it.task]) for it in items) for items, _ in pool]
    print(
        f"{args.preset}: {params / 1e6:.1f} M params, {args.device} {args.dtype}, "
        f"frame budget {args.frame_budget}, {np.mean(samples):.1f} samples and "
        f"{np.mean(frames):.0f} latent frames a micro-batch (pool {len(pool)})"
    )

    def step(i: int) -> None:
        _, batch = pool[i % len(pool)]
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            loss = model.loss(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(i)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(args.device)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + args.steps):
        step(i)
    sync(args.device)
    wall = time.perf_counter() - t0
    done = [(i % len(pool)) for i in range(warmup, warmup + args.steps)]
    achieved = sum(flops[i] for i in done) / wall
    peak_n = args.peak_n or (8192 if args.device == "cuda" else 1024)
    peak = matmul_peak(args.device, dtype, peak_n)
    print(f"  {args.steps} steps in {wall:.2f} s ({wall / args.steps * 1e3:.1f} ms/step)")
    print(
        f"  samples/s {sum(samples[i] for i in done) / wall:.1f}   "
        f"latent frames/s {sum(frames[i] for i in done) / wall:.0f}"
    )
    print(
        f"  model TFLOP/s {achieved / 1e12:.2f}   {args.dtype} matmul peak "
        f"{peak / 1e12:.2f} TFLOP/s (n={peak_n})   MFU {achieved / peak:.1%}"
    )
    if args.device == "cuda":
        print(f"  peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    verdict = "MET" if achieved / peak >= MFU_TARGET else "MISSED"
    print(f"  MFU target >= {MFU_TARGET:.0%} of the measured peak: {verdict}")


if __name__ == "__main__":
    main()
