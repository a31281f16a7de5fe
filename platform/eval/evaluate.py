"""All metrics for one generated/reference pair: `Evaluator` loads the models once, then scores
pairs; `evaluate_pair` is the one-shot form. `Evaluator.background` scores a generated
background stem with the same models (background.py).

Every metric appears in the result under its name in `METRICS`, as a number or as "not
available" with the reason (a model that is not configured, no video, no reference text, ...).
"""

from __future__ import annotations

import numpy as np

from dubforge.eval.asr import Transcriber, build_asr
from dubforge.eval.audio import check_pair
from dubforge.eval.av_align import av_align
from dubforge.eval.background import background_metrics
from dubforge.eval.config import EvalConfig
from dubforge.eval.dnsmos import DNSMOS_KEYS, dnsmos_metrics, load_dnsmos
from dubforge.eval.f0 import f0_errors, pair_frames
from dubforge.eval.mcd import mcd_from_analyses
from dubforge.eval.results import MetricResult, not_available
from dubforge.eval.speaker import SpeakerEncoder, build_speaker_encoder, secs
from dubforge.eval.sync import build_activity_detector, sync_metrics
from dubforge.eval.wer import load_spelling_mapping, wer_metric
from dubforge.eval.world import analyze

# table order; see each module for the definition
METRICS = (
    "mcd_dtw",
    "mcd_dtw_sl",
    "gpe",
    "vde",
    "ffe",
    "sync_onset_error",
    "sync_offset_error",
    "speech_length_ratio",
    "secs",
    "wer",
    *DNSMOS_KEYS,  # dnsmos_sig, dnsmos_bak, dnsmos_ovrl, dnsmos_p808
    "av_align",
    "lse_d",
    "lse_c",
)

_UNSET = object()


class Evaluator:
    """Scores generated speech against reference speech with the models `config` names.

    `speaker_encoder` and `asr` plug in other models (any `SpeakerEncoder`, any callable
    `(wave, sr) -> str`); when left out they are built from `config`. WER's spelling table is
    the `normalizer.json` in `config.asr_path`, if there is one (wer.py).
    """

    def __init__(
        self,
        config: EvalConfig | None = None,
        *,
        speaker_encoder: SpeakerEncoder | None | object = _UNSET,
        asr: Transcriber | None | object = _UNSET,
    ) -> None:
        self.config = cfg = config or EvalConfig()
        self.speaker = (
            build_speaker_encoder(cfg.speaker_encoder, cfg.device)
            if speaker_encoder is _UNSET
            else speaker_encoder
        )
        self.asr = build_asr(cfg.asr_path, cfg.device, cfg.asr_language) if asr is _UNSET else asr
        self.spelling = load_spelling_mapping(cfg.asr_path)
        self.dnsmos = load_dnsmos() if cfg.dnsmos else None
        self.syncnet = None
        if cfg.syncnet_path is not None:
            from dubforge.eval.syncnet import load_syncnet  # torch model: only when configured

            self.syncnet = load_syncnet(cfg.syncnet_path, cfg.device)
        self.activity = build_activity_detector(cfg.activity_detector, cfg.energy_floor_db)

    def __call__(
        self,
        gen_wave: np.ndarray,
        ref_wave: np.ndarray,
        sr: int,
        *,
        ref_sr: int | None = None,
        video_frames: np.ndarray | None = None,
        fps: float = 25.0,
        text: str | None = None,
    ) -> dict[str, MetricResult]:
        """Every metric in `METRICS` for mono audio at `sr` (the reference at `ref_sr`, which
        must equal `sr`). `video_frames`: RGB [T, H, W, 3] at `fps` (face crops for LSE);
        `text`: the script line, the reference for WER."""
        cfg = self.config
        gen, ref = check_pair(gen_wave, ref_wave, sr, ref_sr)
        a_gen, a_ref = analyze(gen, sr, cfg.f0_method), analyze(ref, sr, cfg.f0_method)
        mcd, mcd_sl, path = mcd_from_analyses(a_gen, a_ref, cfg.mcd_definition)
        out = {"mcd_dtw": mcd, "mcd_dtw_sl": mcd_sl}
        pairs = pair_frames(a_gen.f0, a_ref.f0, path if cfg.f0_alignment == "dtw" else None)
        out.update(f0_errors(*pairs, threshold=cfg.gpe_threshold))
        out.update(sync_metrics(gen, ref, sr, self.activity))
        out["secs"] = secs(gen, ref, sr, self.speaker)
        out["wer"] = self._wer(gen, sr, text)
        out.update(dnsmos_metrics(self.dnsmos, gen, sr))
        out.update(self._video_metrics(gen, sr, video_frames, fps))
        return {name: out[name] for name in METRICS}

    def background(
        self,
        gen_background: np.ndarray,
        ref_background: np.ndarray | None,
        sr: int,
        *,
        video_frames: np.ndarray | None = None,
        fps: float = 25.0,
    ) -> dict[str, MetricResult]:
        """Every metric in `background.BG_METRICS` for a generated background stem at `sr`
        against the reference background (None if the clip has none) and the clip's full RGB
        video frames [T, H, W, 3] at `fps`."""
        return background_metrics(
            gen_background,
            ref_background,
            sr,
            video_frames,
            fps,
            dnsmos=self.dnsmos,
            window_frames=self.config.av_align_window_frames,
        )

    def _wer(self, gen: np.ndarray, sr: int, text: str | None) -> MetricResult:
        if self.asr is None:
            return not_available("wer", "no ASR configured (EvalConfig.asr_path)")
        if text is None:
            return not_available("wer", "no reference text given")
        return wer_metric(self.asr(gen, sr), text, self.spelling)

    def _video_metrics(
        self, gen: np.ndarray, sr: int, frames: np.ndarray | None, fps: float
    ) -> dict[str, MetricResult]:
        from dubforge.eval.syncnet import lse_metrics  # imports torch

        av = (
            not_available("av_align", "no video frames given")
            if frames is None
            else av_align(gen, sr, frames, fps, self.config.av_align_window_frames)
        )
        lse = lse_metrics(self.syncnet, gen, sr, frames, fps, self.config.lse_vshift)
        return {"av_align": av, **lse}


def evaluate_pair(
    gen_wave: np.ndarray,
    ref_wave: np.ndarray,
    sr: int,
    video_frames: np.ndarray | None = None,
    text: str | None = None,
    config: EvalConfig | None = None,
    *,
    ref_sr: int | None = None,
    fps: float = 25.0,
    evaluator: Evaluator | None = None,
) -> dict[str, MetricResult]:
    """Every metric for one pair; builds an `Evaluator` from `config` unless one is given
    (build one yourself to score many pairs without reloading models)."""
    ev = evaluator or Evaluator(config)
    return ev(gen_wave, ref_wave, sr, ref_sr=ref_sr, video_frames=video_frames, fps=fps, text=text)
