"""The aggregator: every metric present, perfect scores for a perfect dub, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from dubforge.eval import METRICS, EvalConfig, Evaluator, evaluate_pair
from dubforge.eval.mcd import mcd_dtw
from tests.eval.signals import SR, TEXT_A, pad
from tests.eval.tiny_models import save_random_syncnet


def _fake_asr(text: str):
    return lambda wave, sr: text


@pytest.fixture(scope="module")
def evaluator() -> Evaluator:
    # resemblyzer from the package; an ASR that "hears" the script line perfectly
    return Evaluator(EvalConfig(), asr=_fake_asr(TEXT_A.upper()))


def _faces(n: int) -> np.ndarray:
    """Face-crop-sized frames with a bright block that moves now and then."""
    frames = np.full((n, 48, 48, 3), 80, np.uint8)
    for i in range(n):
        y = 4 + 8 * ((i // 7) % 4)
        frames[i, y : y + 12, 10:30] = 200
    return frames


def test_a_perfect_dub_scores_perfectly(speech, evaluator):
    ref = pad(speech["m3_a"], 0.2)
    res = evaluator(ref, ref, SR, text=TEXT_A)
    assert list(res) == list(METRICS)
    v = {k: r.value for k, r in res.items()}
    assert v["mcd_dtw"] == 0.0 and v["mcd_dtw_sl"] == 0.0
    assert v["gpe"] == v["vde"] == v["ffe"] == 0.0
    assert v["sync_onset_error"] == v["sync_offset_error"] == 0.0
    assert v["speech_length_ratio"] == 1.0
    assert v["secs"] == pytest.approx(1.0, abs=1e-6)
    assert v["wer"] == 0.0
    for name in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"):
        assert 1.0 <= v[name] <= 5.0, name  # a MOS: no "perfect" value for a copy
    assert res["mcd_dtw"].details["definition"] == "v2c"  # the papers' MCD by default
    for name in ("av_align", "lse_d", "lse_c"):
        assert v[name] is None and res[name].reason


def test_a_worse_dub_scores_worse(speech, evaluator):
    ref = pad(speech["m3_a"], 0.2)
    other = pad(speech["f3_a"], 0.45)  # other voice, late
    good = evaluator(ref, ref, SR, text=TEXT_A)
    bad = Evaluator(EvalConfig(), asr=_fake_asr("the captain lost a lantern"))(
        other, ref, SR, text=TEXT_A
    )
    for lower_is_better in ("mcd_dtw", "mcd_dtw_sl", "ffe", "sync_onset_error", "wer"):
        assert bad[lower_is_better].value > good[lower_is_better].value, lower_is_better
    assert bad["secs"].value < good["secs"].value - 0.1
    # 2 substitutions (left -> lost, the -> a) + 5 deletions over 10 reference words
    assert bad["wer"].value == pytest.approx(7 / 10)


def test_video_metrics_run_when_frames_and_weights_are_given(speech, tmp_path):
    weights = save_random_syncnet(tmp_path / "syncnet.model")
    cfg = EvalConfig(syncnet_path=weights, speaker_encoder="none", lse_vshift=2)
    wave = speech["m3_a"][: int(0.6 * SR)]
    res = evaluate_pair(wave, wave, SR, video_frames=_faces(15), config=cfg)
    assert res["av_align"].available and 0.0 <= res["av_align"].value <= 1.0
    assert res["lse_d"].available and res["lse_c"].value >= 0.0
    assert res["secs"].value is None and res["wer"].value is None
    assert "asr_path" in res["wer"].reason


def test_not_available_without_text_or_models(speech):
    ev = Evaluator(EvalConfig(speaker_encoder="none"))
    res = ev(speech["m3_a"], speech["m3_a"], SR, text=TEXT_A)
    assert res["wer"].value is None and "asr_path" in res["wer"].reason
    assert res["lse_d"].value is None and "syncnet_path" in res["lse_d"].reason
    assert (
        Evaluator(EvalConfig(speaker_encoder="none"), asr=_fake_asr("x"))(
            speech["m3_a"], speech["m3_a"], SR
        )["wer"].reason
        == "no reference text given"
    )


def test_dnsmos_can_be_switched_off(speech):
    ev = Evaluator(EvalConfig(speaker_encoder="none", dnsmos=False))
    assert ev.dnsmos is None
    res = ev(speech["m3_a"], speech["m3_a"], SR)
    for name in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"):
        assert res[name].value is None and "EvalConfig.dnsmos" in res[name].reason


def test_mcd_definition_comes_from_the_config(speech):
    gen, ref = speech["f3_a"], speech["m3_a"]
    cfg = {"speaker_encoder": "none", "dnsmos": False}
    v2c = Evaluator(EvalConfig(**cfg))(gen, ref, SR)["mcd_dtw"]
    ours = Evaluator(EvalConfig(mcd_definition="dubforge", **cfg))(gen, ref, SR)["mcd_dtw"]
    assert v2c.details["definition"] == "v2c" and ours.details["definition"] == "dubforge"
    assert v2c.value == mcd_dtw(gen, ref, SR)[0].value
    assert ours.value == mcd_dtw(gen, ref, SR, "dubforge")[0].value
    assert abs(v2c.value - ours.value) > 0.5


def test_wer_spelling_table_comes_from_the_asr_folder(tmp_path):
    (tmp_path / "normalizer.json").write_text('{"colour": "color"}')
    hears = _fake_asr("the color of the river")
    wave = np.sin(2 * np.pi * 200 * np.arange(SR) / SR).astype(np.float32)
    cfg = {"speaker_encoder": "none", "dnsmos": False}
    with_table = Evaluator(EvalConfig(asr_path=tmp_path, **cfg), asr=hears)
    without = Evaluator(EvalConfig(**cfg), asr=hears)
    text = "The colour of the river."
    assert with_table(wave, wave, SR, text=text)["wer"].value == 0.0
    assert without(wave, wave, SR, text=text)["wer"].value == pytest.approx(1 / 5)


def test_background_stem_is_scored_with_the_same_models(evaluator):
    from dubforge.eval.background import BG_METRICS
    from tests.eval.signals import bursts, jumping_square

    onsets = [0.2, 0.6, 1.0]
    stem, video = bursts(onsets, 1.4), jumping_square([round(t * 25) for t in onsets], 35)
    res = evaluator.background(stem, 0.5 * stem, SR, video_frames=video, fps=25.0)
    assert tuple(res) == BG_METRICS
    assert res["bg_av_align"].value == 1.0
    assert res["bg_energy_ratio_db"].value == pytest.approx(6.0206, abs=1e-4)
    assert 1.0 <= res["bg_dnsmos_bak"].value <= 5.0


def test_wer_runs_through_the_configured_whisper(speech, whisper_dir):
    ev = Evaluator(EvalConfig(asr_path=whisper_dir, speaker_encoder="none"))
    res = ev(speech["m3_a"], speech["m3_a"], SR, text=TEXT_A)
    # random weights transcribe nonsense: WER is available and far from perfect
    assert res["wer"].available and res["wer"].value >= 0.9
    assert isinstance(res["wer"].details["hypothesis"], str)


def test_configured_but_missing_models_fail_at_build(tmp_path):
    with pytest.raises(ValueError, match="syncnet_path"):
        Evaluator(EvalConfig(syncnet_path=tmp_path / "nope.model", speaker_encoder="none"))
    with pytest.raises(ValueError, match="asr_path"):
        Evaluator(EvalConfig(asr_path=tmp_path, speaker_encoder="none"))


def test_bad_pairs_are_value_errors(speech):
    ev = Evaluator(EvalConfig(speaker_encoder="none"))
    wave = speech["m3_a"]
    with pytest.raises(ValueError, match="sample rates differ"):
        ev(wave, wave, SR, ref_sr=16000)
    with pytest.raises(ValueError, match="generated audio: audio is empty"):
        ev(np.zeros(0, np.float32), wave, SR)
    with pytest.raises(ValueError, match="reference audio: audio is empty"):
        ev(wave, np.zeros(0, np.float32), SR)
    with pytest.raises(ValueError, match="mono"):
        ev(np.stack([wave, wave]), wave, SR)
