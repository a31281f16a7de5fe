"""WORLD mel-cepstrum and MCD-DTW / MCD-DTW-SL."""

from __future__ import annotations

import numpy as np
import pytest

from dubforge.eval.mcd import MCD_CONST, mcd_dtw, mcd_from_analyses, mel_cepstrum, path_mcd
from dubforge.eval.world import (
    FRAME_PERIOD_MS,
    analyze,
    dtw_path,
    freqt,
    sp_to_mcep,
    warped_log_spectrum,
)
from tests.eval.signals import SR, voice


@pytest.fixture(scope="module")
def ref() -> np.ndarray:
    return voice()


def test_mcep_inverts_a_known_mel_cepstrum():
    # a smooth envelope built from a known 13th-order mel-cepstrum comes back unchanged
    rng = np.random.default_rng(0)
    mc = rng.normal(0, 0.3, (3, 14)) / (1 + np.arange(14))
    log_amp = warped_log_spectrum(mc, 0.65, 2049)  # fine grid: little truncation error
    back = sp_to_mcep(np.exp(2 * log_amp), 13, 0.65, eps=0.0)  # power = amplitude^2
    np.testing.assert_allclose(back, mc, atol=1e-3)


def test_freqt_without_warping_truncates():
    c = np.arange(1.0, 21.0)[None]
    np.testing.assert_allclose(freqt(c, 5, 0.0), c[:, :6])


def test_analysis_frames_are_5ms_at_22k(ref):
    a = analyze(ref, SR)
    assert a.mcep.shape == (a.frames, 14) and a.sp.shape == (a.frames, 257)
    assert a.frames == int(len(ref) / SR * 1000 / FRAME_PERIOD_MS) + 1
    # the voiced part sits at the synthetic F0 (120 Hz +- 4 % vibrato)
    assert 110 < np.median(a.f0[a.f0 > 0]) < 130


def test_other_sample_rates_are_resampled(ref):
    import soxr

    a = analyze(ref, SR)
    b = analyze(soxr.resample(ref, SR, 16000), 16000)
    assert abs(a.frames - b.frames) <= 1
    m, _ = mcd_dtw(soxr.resample(ref, SR, 16000), soxr.resample(ref, SR, 16000), 16000)
    assert m.value == 0.0


def test_identical_audio_has_zero_mcd(ref):
    plain, sl = mcd_dtw(ref, ref, SR)
    assert plain.value == 0.0 and sl.value == 0.0
    assert plain.details["path_len"] == plain.details["frames_ref"]


def test_noise_raises_mcd_monotonically(ref):
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(len(ref)).astype(np.float32)
    values = [mcd_dtw(ref + s * noise, ref, SR)[0].value for s in (0.0, 0.003, 0.03)]
    assert values[0] == 0.0 < values[1] < values[2]
    assert values[2] > 5.0  # dB: a clearly audible distortion


def test_sl_penalises_length_by_the_frame_ratio(ref):
    longer = np.concatenate([ref, np.zeros(SR // 2, np.float32)])  # +0.5 s of silence
    plain, sl = mcd_dtw(longer, ref, SR)
    ratio = plain.details["frames_gen"] / plain.details["frames_ref"]
    assert ratio == pytest.approx((len(ref) + SR // 2) / len(ref), rel=0.01)
    assert sl.value == pytest.approx(plain.value * ratio)
    # the DTW path absorbs the extra silence: spectrally almost the same utterance
    assert plain.value < 1.0


@pytest.mark.parametrize(("definition", "first"), [("v2c", 0), ("dubforge", 1)])
def test_mcd_is_the_mean_over_the_dtw_path(ref, definition, first):
    a, b = analyze(ref, SR), analyze(voice(f0=140.0), SR)
    plain, _, path = mcd_from_analyses(a, b, definition)
    ma, mb = mel_cepstrum(a, definition), mel_cepstrum(b, definition)
    d = ma[path[:, 0], first:] - mb[path[:, 1], first:]
    expected = np.mean(MCD_CONST * np.sqrt((d**2).sum(1)))
    assert plain.value == pytest.approx(expected)
    assert plain.details["definition"] == definition
    assert path[0].tolist() == [0, 0] and path[-1].tolist() == [a.frames - 1, b.frames - 1]


def test_v2c_definition_doubles_the_cepstrum_and_keeps_c0(ref):
    # pymcd reads WORLD's power envelope as an amplitude: log(sp^2) = 2 log(sp) wherever the
    # envelope is far above the 1e-8 floor, as for loud white noise
    noise = analyze(0.3 * np.random.default_rng(0).standard_normal(SR // 2), SR)
    assert noise.sp.min() > 1e-4  # sp^2 > 1e-8: the eps floor barely matters
    np.testing.assert_allclose(
        mel_cepstrum(noise, "v2c"), 2 * mel_cepstrum(noise, "dubforge"), atol=1e-3
    )
    # the cepstrum comes from the envelope, whichever one `analyze` stored
    np.testing.assert_array_equal(mel_cepstrum(noise, "dubforge"), noise.mcep)
    assert mcd_dtw(ref, ref, SR, "v2c")[0].value == 0.0
    # c0 stays in the frame distance, so a pure gain change counts
    louder = mcd_dtw(2 * ref, ref, SR)[0].value
    assert louder > 5 * mcd_dtw(2 * ref, ref, SR, "dubforge")[0].value


@pytest.fixture(scope="module")
def other() -> np.ndarray:
    """Another "utterance": higher voice, other vowel, other pause, a little longer."""
    return voice(f0=150.0, dur=1.35, pauses=((0.5, 0.7),), formants=(500.0, 1500.0, 2400.0))


def test_default_is_pymcd_on_the_same_path(ref, other):
    from pymcd.mcd import Calculate_MCD

    oracle = Calculate_MCD("dtw_sl")
    plain, sl, path = mcd_from_analyses(analyze(other, SR), analyze(ref, SR))
    mc_gen, mc_ref = oracle.wav2mcep_numpy(other), oracle.wav2mcep_numpy(ref)
    # pymcd pairs (reference index, synthesised index)
    frames, cost = oracle.calculate_mcd_distance(mc_ref, mc_gen, path[:, ::-1])
    expected = oracle.log_spec_dB_const * cost / frames
    assert expected > 3.0  # a real distance, not two empty sequences
    assert abs(plain.value - expected) < 1e-6
    coefficient = max(len(mc_ref), len(mc_gen)) / min(len(mc_ref), len(mc_gen))
    assert abs(sl.value - coefficient * expected) < 1e-6


def test_pymcd_end_to_end_on_its_own_fastdtw_path(ref, other, tmp_path):
    import soundfile as sf
    from fastdtw import fastdtw
    from pymcd.mcd import Calculate_MCD
    from scipy.spatial.distance import euclidean

    files = {"ref": tmp_path / "ref.wav", "gen": tmp_path / "gen.wav"}
    sf.write(files["ref"], ref, SR, subtype="FLOAT")  # librosa.load gives back these floats
    sf.write(files["gen"], other, SR, subtype="FLOAT")
    published = Calculate_MCD("dtw").calculate_mcd(files["ref"], files["gen"])
    a, b = analyze(other, SR), analyze(ref, SR)
    mc_gen, mc_ref = mel_cepstrum(a), mel_cepstrum(b)
    cost, path = fastdtw(mc_ref[:, 1:], mc_gen[:, 1:], dist=euclidean)  # pymcd's own call
    fast_path = np.asarray(path)[:, ::-1]  # -> (gen index, ref index)
    assert abs(path_mcd(mc_gen, mc_ref, fast_path) - published) < 1e-6
    # exact DTW finds a path at most as costly as fastdtw's approximation
    exact = mcd_from_analyses(a, b)[2]
    exact_cost = np.linalg.norm(mc_gen[exact[:, 0], 1:] - mc_ref[exact[:, 1], 1:], axis=1).sum()
    assert exact_cost <= cost + 1e-9


def test_unknown_definition_is_rejected(ref):
    with pytest.raises(ValueError, match="mcd_definition"):
        mcd_dtw(ref, ref, SR, "pymcd")


def test_dtw_path_is_monotone_and_complete():
    a = np.array([[0.0], [1.0], [2.0], [3.0]])
    b = np.array([[0.0], [0.0], [1.0], [3.0]])
    path = dtw_path(a, b)
    assert path[0].tolist() == [0, 0] and path[-1].tolist() == [3, 3]
    assert np.all(np.diff(path, axis=0) >= 0)
    assert [1, 2] in path.tolist()


@pytest.mark.parametrize(
    ("gen", "ref", "sr", "match"),
    [
        (np.zeros(0, np.float32), np.ones(100, np.float32), SR, "empty"),
        (np.ones((2, 100), np.float32), np.ones(100, np.float32), SR, "mono"),
        (np.ones(100, np.float32), np.full(100, np.nan, np.float32), SR, "NaN"),
        (np.ones(100, np.float32), np.ones(100, np.float32), 0, "sample rate"),
    ],
)
def test_bad_audio_is_rejected(gen, ref, sr, match):
    with pytest.raises(ValueError, match=match):
        mcd_dtw(gen, ref, sr)
