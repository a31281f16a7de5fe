"""`Generator`: lines dubbed from a tiny export, batched requests that match single ones, the
per-row guidance and seeds of `flow.sample`, and `check_input`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dubforge.eval.audio import resample
from dubforge.ingest.tokenize import CodecTokenizer
from dubforge.model import flow
from dubforge.model.batch import collate
from dubforge.model.checkpoint import save_checkpoint
from dubforge.model.config import ModelConfig, SpaceSection
from dubforge.model.flow import Guidance
from dubforge.model.presets import build_model
from dubforge.model.spaces import CodecSpace, MelSpace
from dubforge.serve.generate import DubInput, Generator, SamplerSettings, check_input
from tests.ingest.codec_model import make_tiny_codec
from tests.model.conftest import make_record

PROFILE = "hifigan_22k"
REF_RATE = 16000


def _export(folder: Path, tasks: tuple[str, ...] = ("tts", "v2s")) -> Path:
    """A tiny mel-space export (Griffin-Lim, 2 iterations) whose weights are perturbed away
    from the zero init, so every condition changes the output."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        space=SpaceSection(mel_profile=PROFILE, griffin_lim_iters=2),
        tasks=tasks,
    )
    space = MelSpace(PROFILE, griffin_lim_iters=2)
    model = build_model(cfg, space)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save_checkpoint(folder, model, cfg, space, stage="v2s", step=3)


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Generator:
    return Generator.from_folder(_export(tmp_path_factory.mktemp("export") / "v2s"))


def _reference(seconds: float = 0.6, hz: float = 180.0) -> np.ndarray:
    t = np.arange(round(seconds * REF_RATE)) / REF_RATE
    return (0.2 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _line(
    duration: float = 0.5,
    *,
    seed: int = 0,
    guidance: Guidance | None = Guidance(),
    nfe: int = 3,
    lips: bool = True,
    face: bool = False,
    text: str = "a new line",
) -> DubInput:
    rng = np.random.default_rng(seed + 100)
    f = round(duration * 25)
    return DubInput(
        text=text,
        duration=duration,
        lips=rng.integers(0, 256, (f, 96, 96), dtype=np.uint8) if lips else None,
        face=rng.integers(0, 256, (f, 32, 32, 3), dtype=np.uint8) if face else None,
        face_fps=25,
        labels={"gender": "female", "emotion": "sad"},
        reference=_reference(),
        reference_rate=REF_RATE,
        reference_text="the reference",
        settings=SamplerSettings(nfe=nfe, method="euler", sway=-1.0, guidance=guidance, seed=seed),
    )


def test_lines_have_their_exact_length_and_are_seeded(generator):
    sr = generator.sample_rate
    lines = [_line(0.5, seed=1), _line(0.73, seed=1, lips=False), _line(0.61, seed=1, face=True)]
    for line in lines:
        (wave,) = generator.generate([line])
        assert wave.dtype == np.float32 and wave.shape == (round(line.duration * sr),)
        assert np.isfinite(wave).all() and np.abs(wave).max() > 0
    a, b = generator.generate([lines[0]]), generator.generate([lines[0]])
    assert np.array_equal(a[0], b[0])
    other = dataclasses.replace(lines[0], settings=dataclasses.replace(lines[0].settings, seed=2))
    assert np.abs(generator.generate([other])[0] - a[0]).max() > 1e-4


def test_a_batch_gives_each_line_what_it_gets_alone(generator):
    lines = [
        _line(0.5, seed=3, guidance=Guidance(2.0, 2.0, 2.0)),
        _line(0.83, seed=4, guidance=Guidance(1.5, 2.5, 3.0), lips=False),
        _line(0.66, seed=5, guidance=None, face=True),
    ]
    alone = [generator.generate([line])[0] for line in lines]
    before = generator.calls
    together = generator.generate(lines)
    assert generator.calls == before + 1  # one group: one sampling run
    for a, t in zip(alone, together, strict=True):
        assert a.shape == t.shape
        np.testing.assert_allclose(t, a, rtol=1e-5, atol=1e-4)  # peaks ~10
    # the rows are not interchangeable: the comparison is not vacuous
    assert np.abs(together[0] - together[2][: len(together[0])]).max() > 1e-3
    mixed = [lines[0], dataclasses.replace(lines[1], settings=dataclasses.replace(
        lines[1].settings, nfe=2))]  # fmt: skip
    before = generator.calls
    out = generator.generate(mixed)
    assert generator.calls == before + 2  # two nfe values: two batches, outputs in input order
    assert [len(w) for w in out] == [len(alone[0]), len(alone[1])]
    np.testing.assert_allclose(out[0], alone[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "guidance, branches",
    [
        ([Guidance(2.0, 2.0, 2.0)] * 3, 2),  # equal scales in every row: full and null
        ([Guidance(2.5, 1.5, 3.0)] * 3, 4),  # distinct scales: all of eq. 9
        ([Guidance(2.0, 2.0, 2.0), Guidance(2.0, 2.0, 3.0), None], 3),  # union {0, 3} {0, 2, 3}
        ([Guidance(3.0, 3.0, 3.0), Guidance(2.0, 2.0, 2.0), None], 2),  # union {0, 3} {0}
    ],
)
def test_a_batch_runs_the_union_of_its_rows_branches(generator, monkeypatch, guidance, branches):
    rows: list[int] = []
    model = generator.model
    real = model.velocity

    def counted(x, t, conds):
        rows.append(x.shape[0])
        return real(x, t, conds)

    monkeypatch.setattr(model, "velocity", counted)
    lines = [_line(0.4 + 0.1 * i, seed=i, guidance=g) for i, g in enumerate(guidance)]
    generator.generate(lines)
    assert rows == [branches * 3] * 3  # nfe forwards, each of branches x 3 rows


def _batch():
    recs = [make_record("a/00000", 0.4), make_record("b/00000", 0.64, seed=1, bg=False)]
    metas = [({**m, "ref_frames": 10}, a) for m, a in recs]
    return collate(metas, MelSpace(), tasks=["v2s", "tts"], train=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(ModelConfig(), MelSpace())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def test_per_row_settings_that_agree_are_the_scalar_path_exactly(model):
    batch, g = _batch(), Guidance(2.0, 2.0, 2.0)
    scalar = flow.sample(model, batch, nfe=2, cfg=g, seed=4)
    assert torch.equal(flow.sample(model, batch, nfe=2, cfg=[g, g], seed=4), scalar)
    one = collate([({**make_record()[0], "ref_frames": 5}, make_record()[1])], MelSpace(),
                  tasks="v2s", train=False)  # fmt: skip
    assert torch.equal(
        flow.sample(model, one, nfe=2, cfg=[g], seed=[9]),
        flow.sample(model, one, nfe=2, cfg=g, seed=9),
    )


def test_per_row_guidance_and_seeds_match_each_row_alone(model):
    batch = _batch()
    cfgs, seeds = [Guidance(2.0, 2.0, 2.0), Guidance(2.5, 1.0, 3.0)], [11, 12]
    together = flow.sample(model, batch, nfe=3, cfg=cfgs, seed=seeds)
    for i in range(2):
        recs = [make_record("a/00000", 0.4), make_record("b/00000", 0.64, seed=1, bg=False)]
        meta, arrays = recs[i]
        alone_batch = collate([({**meta, "ref_frames": 10}, arrays)], MelSpace(),
                              tasks=["v2s", "tts"][i], train=False)  # fmt: skip
        alone = flow.sample(model, alone_batch, nfe=3, cfg=cfgs[i], seed=seeds[i])[0]
        n = int(batch.lengths[i])
        torch.testing.assert_close(together[i, :1, :n], alone[:, :n], rtol=1e-4, atol=1e-4)
        assert not bool(together[i, :, n:].any())  # padding stays zero
    swapped = flow.sample(model, batch, nfe=3, cfg=cfgs, seed=[12, 11])
    assert (swapped - together).abs().max() > 1e-3
    with pytest.raises(ValueError, match="seeds"):
        flow.sample(model, batch, nfe=1, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="guidance"):
        flow.sample(model, batch, nfe=1, cfg=[None])


def _with(line: DubInput, **changes) -> DubInput:
    settings = {k: changes.pop(k) for k in ("nfe", "method", "guidance", "seed") if k in changes}
    if settings:
        changes["settings"] = dataclasses.replace(line.settings, **settings)
    return dataclasses.replace(line, **changes)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"text": "  \n "}, "text"),
        ({"duration": 0.0}, "duration"),
        ({"duration": 31.0}, "duration"),
        ({"duration": float("nan")}, "duration"),
        ({"lips": np.zeros((20, 96, 96), np.uint8)}, "lips"),  # 0.5 s is 12.5 frames
        ({"lips": np.zeros((12, 96, 96), np.float32)}, "lips"),
        ({"face": np.zeros((5, 32, 32), np.uint8)}, "face"),
        ({"labels": {"mood": "sad"}}, "labels"),
        ({"reference": np.array([0.0, np.nan] * 4000, np.float32)}, "reference"),
        ({"reference": np.array([0.0, np.inf] * 4000, np.float32)}, "reference"),
        ({"reference": np.zeros(1500, np.float32)}, "reference"),  # 0.094 s at 16 kHz
        ({"reference": np.zeros((2, 8000), np.float32)}, "reference"),
        ({"reference_rate": 0}, "reference_rate"),
        ({"nfe": 0}, "nfe"),
        ({"nfe": 129}, "nfe"),
        ({"nfe": 3, "method": "midpoint"}, "nfe"),
        ({"method": "rk4"}, "method"),
        ({"guidance": Guidance(2.0, 21.0, 2.0)}, "guidance.labels"),
        ({"guidance": Guidance(-0.5, 2.0, 2.0)}, "guidance.video"),
        ({"guidance": Guidance(2.0, 2.0, float("inf"))}, "guidance.text"),
        ({"seed": -1}, "seed"),
    ],
)
def test_check_input_names_the_bad_field(changes, field):
    line = _line(0.5)
    check_input(line, max_seconds=30.0)  # the unchanged line is fine
    with pytest.raises(ValueError, match=rf"^(settings\.)?{field}\b"):
        check_input(_with(line, **changes), max_seconds=30.0)


def test_generate_checks_every_input_first(generator):
    before = generator.calls
    with pytest.raises(ValueError, match=r"input 1: text"):
        generator.generate([_line(0.4), _line(0.4, text="")])
    assert generator.calls == before


def test_lips_need_an_export_that_serves_v2s(tmp_path):
    tts_only = Generator.from_folder(_export(tmp_path / "tts", tasks=("tts",)))
    assert tts_only.task_for(_line(0.4)) == "tts"  # lips are then left unused
    (wave,) = tts_only.generate([_line(0.4)])
    assert wave.shape == (round(0.4 * tts_only.sample_rate),)
    v2s_only = Generator.from_folder(_export(tmp_path / "v2s", tasks=("v2s",)))
    with pytest.raises(ValueError, match="lips"):
        v2s_only.generate([_line(0.4, lips=False)])


def test_info_and_defaults_come_from_the_export(generator):
    info = generator.info
    assert info["preset"] == "tiny" and info["tasks"] == ["v2s", "tts"]
    assert info["space"] == {
        "kind": "mel",
        "frame_rate": generator.space.frame_rate,
        "mel_profile": PROFILE,
    }
    assert info["vocoder"] == {"kind": "griffin_lim", "fallback": True}
    assert info["training"] == {"stage": "v2s", "step": 3} and info["random_weights"] is False
    assert info["sampler"] == {"nfe": 32, "method": "euler", "sway": -1.0}
    assert info["guidance"] == {"enabled": True, "video": 2.0, "labels": 2.0, "text": 2.0}
    assert generator.defaults() == SamplerSettings(32, "euler", -1.0, Guidance(), 0)
    check_input(_line(0.5), max_seconds=1.0)


def test_codec_space_prompts_with_the_tokenizers_codes(tmp_path):
    codec = make_tiny_codec(tmp_path / "codec", "encodec")
    space = CodecSpace(str(codec), codebooks=4)
    cfg = ModelConfig(space=SpaceSection(name="codec", path=str(codec), codebooks=4))
    torch.manual_seed(0)
    folder = save_checkpoint(tmp_path / "export", build_model(cfg, space), cfg, space)
    gen = Generator.from_folder(folder)
    line = _line(0.44, seed=2, nfe=2)
    codes = gen.encode_reference(line.reference, REF_RATE)
    assert codes.dtype == np.int16 and codes.shape == (4, 45)  # 0.6 s at 75 Hz
    wave = resample(line.reference, REF_RATE, 24000).astype(np.float32)
    np.testing.assert_array_equal(codes, CodecTokenizer(str(codec)).encode(wave)[:4])
    (out,) = gen.generate([line])
    assert out.shape == (round(0.44 * 24000),) and np.isfinite(out).all()
    assert gen.info["space"] == {"kind": "codec", "frame_rate": 75.0, "codec": "encodec",
                                 "codebooks": 4}  # fmt: skip


def test_face_crops_of_another_size_go_to_another_batch(generator):
    small, none = _line(0.4, seed=1, face=True), _line(0.5, seed=2)
    rng = np.random.default_rng(0)
    large = dataclasses.replace(small, face=rng.integers(0, 256, (10, 48, 48, 3), dtype=np.uint8))
    before = generator.calls
    out = generator.generate([small, large, none])
    assert generator.calls == before + 2  # {small, none} and {large}
    np.testing.assert_allclose(out[2], generator.generate([none])[0], rtol=1e-5, atol=1e-4)
