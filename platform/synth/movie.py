"""Render a planned movie: mixed soundtrack, talking-face video, subtitles and ground truth.

Files written for movie `<id>` under a corpus root:
  movies/<id>.mp4            25 fps h264 + aac, the planned size and channel count
  movies/<id>.srt | .vtt     one cue per line, exactly [first word start, last word end]
  movies/<id>.labels.json    labels per line: scene type, speaker, gender, emotion
  movies/<id>.dialogue.flac  with `stems`: the speech stem as a studio dialogue stem
  movies/<id>.me.flac        with `stems`: the background as a music-and-effects stem
  truth/<id>/speech.wav      the speech stem, PCM16 at the movie's rate and channels
  truth/<id>/background.wav  the background stem; speech + background == mix.wav
  truth/<id>/mix.wav         the soundtrack before AAC encoding
  truth/<id>/alignment.json  words, lines with measured levels, per-frame face and mouth boxes
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import ffmpeg
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from dubforge.schema import FPS
from dubforge.synth import background as bgm
from dubforge.synth import face as fc
from dubforge.synth.script import Line, MoviePlan
from dubforge.synth.subtitles import write_srt, write_vtt
from dubforge.synth.tts import Utterance

# shape key: c = audio channels, n = samples, f = video frames
_BASE_BG_DB = -27.0
_MOUTH_REF_DB = -14.0  # speech RMS at which the mouth opens fully


def render_audio(
    plan: MoviePlan, speech: dict[int, Utterance]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[dict]]:
    """Speech and background stems [c, n] (float, quantised to PCM16 steps), each speaker's
    mono speech [n] (drives the lips), and the measured levels of every line."""
    sr, n, c = plan.sample_rate, int(round(plan.duration * plan.sample_rate)), plan.channels
    mono = np.zeros(n)
    per_speaker = {s.id: np.zeros(n) for s in plan.speakers}
    for line in plan.lines:
        utt = speech[line.index]
        g = np.gcd(sr, utt.sample_rate)
        wave = resample_poly(utt.wave.astype(np.float64), sr // g, utt.sample_rate // g)
        voiced = wave[np.abs(wave) > 0.01]
        wave *= bgm.db_to_gain(line.speech_db) / max(float(np.sqrt(np.mean(voiced**2))), 1e-9)
        a = int(round(line.offset * sr))
        b = min(n, a + len(wave))
        mono[a:b] += wave[: b - a]
        per_speaker[line.speaker][a:b] += wave[: b - a]
    rng = np.random.default_rng([plan.seed, int(plan.movie_id.split("_")[-1]), 1])
    bed = bgm.GENERATORS[plan.background](rng, c, n, sr)
    spans = [(ln.start - 0.05, ln.end + 0.05, ln.bg_db) for ln in plan.lines]
    bg = bed * bgm.level_curve(n, sr, _BASE_BG_DB, spans)[None, :]
    speech_st = np.repeat(mono[None, :], c, axis=0)
    peak = float(np.abs(speech_st + bg).max())
    if peak > 0.97:  # keep the mix clear of clipping; stems scale with it
        speech_st, bg = speech_st * (0.97 / peak), bg * (0.97 / peak)
    speech_st, bg = _quantize(speech_st), _quantize(bg)
    levels = []
    for ln in plan.lines:
        a, b = int(ln.start * sr), int(ln.end * sr)
        levels.append(
            {
                "speech_db": round(bgm.rms_db(speech_st[:, a:b]), 2),
                "bg_db": round(bgm.rms_db(bg[:, a:b]), 2),
            }
        )
    return speech_st, bg, per_speaker, levels


def _quantize(x: np.ndarray) -> np.ndarray:
    return np.round(x * 32767.0) / 32767.0


def _shot(region_w: int, h: int, zoom: float, t: float, phase: float, x0: int) -> fc.FaceShot:
    """A close-up: the face at ~half the frame height (at most 62% of the region's width),
    centred a little above the middle, with a slow sway like a hand-held camera."""
    face_w = fc.FACE_BOX[2] - fc.FACE_BOX[0]
    scale = min(h / fc.PHOTO_SIZE * zoom, 0.62 * region_w / face_w)
    fx, fy = 224.0, 125.0  # face centre in photo space (the mirror keeps it near the middle)
    sway_x = 0.012 * region_w * np.sin(2 * np.pi * t / 5.3 + phase)
    sway_y = 0.008 * h * np.sin(2 * np.pi * t / 3.7 + 2 * phase)
    # whole-pixel placement: the renderer crops a pre-scaled photo instead of resampling it
    tx = round(region_w / 2 - scale * fx + sway_x)
    ty = round(0.42 * h - scale * fy + sway_y)
    return fc.FaceShot(round(scale, 4), float(x0 + tx), float(ty))


def render_video(
    plan: MoviePlan, per_speaker: dict[str, np.ndarray], out_path: Path, mix_wav: Path, crf: int
) -> list[dict]:
    """Encode the frames and the soundtrack into an mp4; return per-frame ground truth."""
    w, h = plan.width, plan.height
    n_frames = int(round(plan.duration * FPS))
    ref = bgm.db_to_gain(_MOUTH_REF_DB)
    opening = {
        k: fc.openings(fc.envelope(v, plan.sample_rate, FPS), ref) for k, v in per_speaker.items()
    }
    spk_a, spk_b = plan.speakers[0].id, plan.speakers[1].id
    video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=FPS)
    audio = ffmpeg.input(str(mix_wav))
    proc = (
        ffmpeg.output(
            video,
            audio,
            str(out_path),
            vcodec="libx264",
            pix_fmt="yuv420p",
            preset="superfast",
            crf=crf,
            acodec="aac",
            audio_bitrate="128k",
            r=FPS,
            movflags="+faststart",
            threads=1,
        )
        .overwrite_output()
        .global_args("-loglevel", "error")
        .run_async(pipe_stdin=True)
    )
    zoom = {s.index: 1.8 + 0.4 * ((s.index * 7 + plan.seed) % 5) / 4 for s in plan.scenes}
    truth = []
    try:
        for f in range(n_frames):
            t = f / FPS
            scene = next(s for s in plan.scenes if s.start <= t < s.end or s is plan.scenes[-1])
            canvas = np.empty((h, w, 3), np.uint8)
            if scene.type == "dialogue":
                cast = [("a", spk_a, (0, w // 2)), ("b", spk_b, (w // 2, w))]
            else:
                spk = spk_a if scene.face == "a" else spk_b
                cast = [(scene.face, spk, (0, w))]
            faces = []
            for k, (variant, spk, region) in enumerate(cast):
                o = (
                    0.0
                    if scene.type == "narration"
                    else float(opening[spk][min(f, len(opening[spk]) - 1)])
                )
                shot = _shot(
                    region[1] - region[0], h, zoom[scene.index], t, 1.3 * k + scene.index, region[0]
                )
                view = fc.FaceShot(shot.scale, shot.tx - region[0], shot.ty)
                canvas[:, region[0] : region[1]] = fc.render(
                    variant, o, view, (region[1] - region[0], h)
                )
                faces.append(
                    {
                        "speaker": spk,
                        "variant": variant,
                        "opening": round(o, 2),
                        "face_box": shot.box(fc.face_box(variant)),
                        "mouth_box": shot.box(fc.mouth_box(variant, o)),
                    }
                )
            truth.append({"frame": f, "scene": scene.index, "faces": faces})
            proc.stdin.write(canvas.tobytes())
    finally:
        proc.stdin.close()
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"ffmpeg failed to encode {out_path} (exit {code})")
    return truth


def write_movie(
    plan: MoviePlan, speech: dict[int, Utterance], root: Path, crf: int, vtt: bool, stems: bool
) -> dict:
    """Render and write every file of one movie; return its entry for the corpus index."""
    movies, truth_dir = root / "movies", root / "truth" / plan.movie_id
    movies.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    speech_st, bg, per_speaker, levels = render_audio(plan, speech)
    sr = plan.sample_rate
    for name, x in (("speech", speech_st), ("background", bg), ("mix", speech_st + bg)):
        sf.write(
            truth_dir / f"{name}.wav", np.round(x.T * 32767).astype(np.int16), sr, subtype="PCM_16"
        )
    if stems:  # a studio delivery: dialogue and music-and-effects stems beside the picture
        for name, x in (("dialogue", speech_st), ("me", bg)):
            out = movies / f"{plan.movie_id}.{name}.flac"
            sf.write(out, np.round(x.T * 32767).astype(np.int16), sr, subtype="PCM_16")
    frames = render_video(
        plan, per_speaker, movies / f"{plan.movie_id}.mp4", truth_dir / "mix.wav", crf
    )
    cues = [(ln.start, ln.end, ln.text, ln.scene_type == "narration") for ln in plan.lines]
    sub = movies / f"{plan.movie_id}.{'vtt' if vtt else 'srt'}"
    (write_vtt if vtt else write_srt)(sub, cues)
    (movies / f"{plan.movie_id}.labels.json").write_text(json.dumps(_labels(plan), indent=1))
    alignment = {
        "movie_id": plan.movie_id,
        "duration": plan.duration,
        "fps": FPS,
        "sample_rate": sr,
        "channels": plan.channels,
        "width": plan.width,
        "height": plan.height,
        "background": plan.background,
        "scenes": [asdict(s) for s in plan.scenes],
        "lines": [_line_truth(ln, lv) for ln, lv in zip(plan.lines, levels, strict=True)],
        "frames": frames,
    }
    (truth_dir / "alignment.json").write_text(json.dumps(alignment))
    return {
        "movie_id": plan.movie_id,
        "video": f"movies/{plan.movie_id}.mp4",
        "subtitles": f"movies/{sub.name}",
        "lines": len(plan.lines),
        "scene_types": sorted({s.type for s in plan.scenes}),
        "low_background_lines": sum(lv["bg_db"] < -40 for lv in levels),
        "quiet_speech_lines": sum(lv["speech_db"] < -40 for lv in levels),
    }


def _line_truth(ln: Line, level: dict) -> dict:
    return {
        "index": ln.index,
        "start": ln.start,
        "end": ln.end,
        "offset": ln.offset,
        "text": ln.text,
        "speaker": ln.speaker,
        "scene": ln.scene,
        "scene_type": ln.scene_type,
        "planned_speech_db": round(ln.speech_db, 2),
        "planned_bg_db": round(ln.bg_db, 2),
        **level,
        "words": [asdict(w) for w in ln.words],
    }


def _labels(plan: MoviePlan) -> dict:
    """The sidecar labels a studio might deliver: per line scene type, speaker and delivery."""
    lines = []
    for ln in plan.lines:
        spk = plan.speaker(ln.speaker)
        lines.append(
            {
                "index": ln.index,
                "start": ln.start,
                "end": ln.end,
                "scene_type": ln.scene_type,
                "speaker_id": spk.id,
                "gender": spk.gender,
                "age": "adult",
                "emotion": ln.emotion,
                "on_screen": ln.scene_type != "narration",
            }
        )
    speakers = [{"id": s.id, "gender": s.gender, "voice": s.voice} for s in plan.speakers]
    return {"movie_id": plan.movie_id, "speakers": speakers, "lines": lines}
