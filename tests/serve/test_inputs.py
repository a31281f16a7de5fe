"""The dubbing API's input preparation and output muxing, on small real media made here.

Clips are 2 s: one talking face rendered by the synthetic movie generator (which MediaPipe
finds), the others ffmpeg test patterns in each accepted container, plus the broken uploads
users send. Refusals are checked for their status, field, and a detail free of server paths.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dubforge.ingest.probe import MediaError, probe
from dubforge.serve.inputs import (
    PEAK_CEILING,
    ClipPreparer,
    InputError,
    InputSection,
    encode_wav,
    limit_peaks,
    mux_mp4,
)
from dubforge.synth import face as synth_face
from tests.ingest.separator_model import make_tiny_mel_roformer

SR = 16000
SECONDS = 2.0
SIZE = 256  # face clip frame side
X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
VP9 = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"]
# container -> (file name, ffmpeg output arguments); the mkv is named .mp4: probed, not named
CONTAINERS = {
    "mp4": ("clip_mp4.mp4", [*X264, "-c:a", "aac", "-movflags", "+faststart"]),
    "mov": ("clip_mov.mov", [*X264, "-c:a", "aac"]),
    "mkv": ("clip_mkv.mp4", [*X264, "-c:a", "libopus", "-f", "matroska"]),
    "webm": ("clip_webm.webm", [*VP9, "-c:a", "libopus"]),
}
PROBED = {"mp4": "mov,mp4", "mov": "mov,mp4", "mkv": "matroska", "webm": "matroska"}


def _tone(seconds: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=330:sample_rate=48000:duration={seconds}"]


def _pattern(seconds: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size=64x48:rate=25:duration={seconds}"]


def _ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    """Run ffmpeg; with `stdin`, it reads that (else -nostdin)."""
    head = ["ffmpeg"] if stdin is not None else ["ffmpeg", "-nostdin"]
    subprocess.run([*head, "-v", "error", "-y", *args], input=stdin, check=True, timeout=120)


def _video_md5(path: Path) -> str:
    """MD5 of the first video stream's packets, stream-copied (no decode)."""
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0", "-c", "copy",
         "-f", "md5", "-"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.decode().strip()


def _streams(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
         str(path)],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout)


def _talking_face(path: Path) -> Path:
    """A 2 s mp4 of the synthetic face whose mouth follows a 3 Hz amplitude-modulated tone."""
    t = np.arange(int(SECONDS * 48000)) / 48000
    speech = (0.4 * np.sin(2 * np.pi * 3 * t) ** 2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    wav = path.with_suffix(".wav")
    sf.write(wav, speech, 48000)
    opening = synth_face.openings(synth_face.envelope(speech, 48000), 0.2)  # [f]
    shot = synth_face.FaceShot(scale=0.9, tx=128 - 0.9 * 224, ty=128 - 0.9 * 125)
    frames = np.stack([synth_face.render("a", float(o), shot, (SIZE, SIZE)) for o in opening])
    _ffmpeg(
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{SIZE}x{SIZE}", "-r", "25", "-i", "-",
        "-i", str(wav), *X264, "-c:a", "aac", "-shortest", str(path),
        stdin=frames.tobytes(),
    )  # fmt: skip
    wav.unlink()
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Every upload the tests send, by name."""
    d = tmp_path_factory.mktemp("uploads")
    files = {"face": _talking_face(d / "face.mp4")}
    for container, (name, args) in CONTAINERS.items():
        _ffmpeg(*_pattern(SECONDS), *_tone(SECONDS), *args, str(d / name))
        files[container] = d / name
    _ffmpeg(*_pattern(5.0), *X264, str(d / "long.mp4"))
    files["long"] = d / "long.mp4"
    # fast-start files whose index claims 3 s while the data stops early
    _ffmpeg(*_pattern(3.0), *_tone(3.0), *X264, "-c:a", "aac", "-movflags", "+faststart",
            str(d / "full.mp4"))  # fmt: skip
    full = (d / "full.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(full[: len(full) * 2 // 3])
    _ffmpeg(*_pattern(3.0), *X264, "-movflags", "+faststart", str(d / "full.mp4"))
    full = (d / "full.mp4").read_bytes()
    (d / "truncated_silent.mp4").write_bytes(full[: len(full) * 2 // 3])
    files["truncated"], files["truncated_silent"] = d / "truncated.mp4", d / "truncated_silent.mp4"
    grey = f"color=c=gray:size=64x48:rate=25:duration={SECONDS}"  # no face to find
    _ffmpeg("-f", "lavfi", "-i", grey, *X264, str(d / "no_audio.mp4"))
    files["no_audio"] = d / "no_audio.mp4"
    _ffmpeg(*_tone(SECONDS), "-c:a", "aac", str(d / "audio_only.mp4"))
    files["audio_only"] = d / "audio_only.mp4"
    _ffmpeg(*_pattern(SECONDS), "-c:v", "libvpx", "-deadline", "realtime", str(d / "vp8.webm"))
    files["vp8"] = d / "vp8.webm"
    _ffmpeg(*_pattern(SECONDS), *X264, "-f", "mpegts", str(d / "clip.ts"))
    files["mpegts"] = d / "clip.ts"
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    files["random"] = d / "random.mp4"
    (d / "text.mp4").write_text("this is a text file with a video extension\n" * 50)
    files["text"] = d / "text.mp4"
    ref = 0.3 * np.sin(2 * np.pi * 180 * np.arange(int(1.5 * 22050)) / 22050)
    sf.write(d / "voice.wav", ref.astype(np.float32), 22050)
    sf.write(d / "silent.wav", np.zeros(22050, np.float32), 22050)
    sf.write(d / "short.wav", ref[:6615].astype(np.float32), 22050)  # 0.3 s
    files |= {"voice": d / "voice.wav", "silent": d / "silent.wav", "short": d / "short.wav"}
    return files


@pytest.fixture(scope="module")
def preparer():
    p = ClipPreparer(InputSection(max_clip_seconds=4.0, faces={"face_size": 64}), SR)
    yield p
    p.close()


@pytest.fixture(scope="module")
def face_clip(preparer, media):
    return preparer.prepare(media["face"])


def _refused(fn, path: Path, status: int, field: str) -> InputError:
    with pytest.raises(InputError) as info:
        fn(path)
    e = info.value
    assert (e.status, e.field) == (status, field), (e.status, e.field, e.detail)
    assert str(path.parent) not in e.detail and "Traceback" not in e.detail
    return e


def test_face_clip_gives_lips_and_faces(face_clip):
    c = face_clip
    assert c.duration == pytest.approx(SECONDS, abs=0.05)
    f = round(c.duration * 25)
    assert c.frames == f
    assert c.face_coverage >= 0.9 and c.n_faces == 1
    assert c.lips is not None and c.lips.shape == (f, 96, 96) and c.lips.dtype == np.uint8
    assert c.face is not None and c.face.dtype == np.uint8
    assert c.face.shape == (len(range(0, f, 5)), 64, 64, 3) and c.face_fps == 5.0
    assert c.lips.std() > 10  # a picture, not padding
    assert c.audio.dtype == np.float32 and len(c.audio) == round(c.duration * SR)
    assert c.sample_rate == SR and c.has_audio and np.abs(c.audio).max() > 0.1
    assert (c.width, c.height, c.video_codec, c.audio_codec) == (SIZE, SIZE, "h264", "aac")


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_each_container_accepted_by_probe(preparer, media, container):
    c = preparer.prepare(media[container])
    assert PROBED[container] in c.container
    assert c.video_codec == ("vp9" if container == "webm" else "h264")
    assert c.frames == round(c.duration * 25) == 50
    assert len(c.audio) == round(c.duration * SR) and np.abs(c.audio).max() > 0.1
    assert c.path == media[container]


def test_clip_without_audio_gets_silence(preparer, media):
    clip = preparer.prepare(media["no_audio"])
    assert not clip.has_audio and clip.audio_codec == ""
    assert len(clip.audio) == round(clip.duration * SR) and not clip.audio.any()
    assert clip.lips is None and clip.face is None and clip.face_coverage < 0.5  # no face


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("random", 415),
        ("text", 415),
        ("truncated", 415),
        ("truncated_silent", 415),
        ("audio_only", 415),
        ("vp8", 415),
        ("mpegts", 415),
        ("long", 422),
    ],
)
def test_bad_videos_refused(preparer, media, name, status):
    e = _refused(preparer.prepare, media[name], status, "video")
    if name == "long":
        assert "5.0 s" in e.detail and "4 s" in e.detail
    if name.startswith("truncated"):
        assert "cut short" in e.detail


def test_too_large_and_too_big_frames(media):
    small = ClipPreparer(InputSection(max_video_bytes=1000, faces={"enabled": False}), SR)
    _refused(small.prepare, media["mp4"], 413, "video")
    narrow = ClipPreparer(InputSection(max_side=32, faces={"enabled": False}), SR)
    e = _refused(narrow.prepare, media["mp4"], 422, "video")
    assert "64x48" in e.detail


def test_reference(preparer, media):
    wave = preparer.reference(media["voice"], 24000)
    assert wave.dtype == np.float32 and len(wave) == round(1.5 * 24000)
    from_video = preparer.reference(media["mkv"], SR)  # a video's audio track
    assert len(from_video) == round(probe(media["mkv"]).duration * SR)
    _refused(lambda p: preparer.reference(p, SR), media["silent"], 422, "reference")
    _refused(lambda p: preparer.reference(p, SR), media["short"], 422, "reference")
    _refused(lambda p: preparer.reference(p, SR), media["random"], 415, "reference")
    _refused(lambda p: preparer.reference(p, SR), media["long"], 415, "reference")  # no audio
    _refused(lambda p: preparer.reference(p, SR), media["text"], 415, "reference")


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_mux_copies_the_video_stream(preparer, media, face_clip, tmp_path, container):
    clip = face_clip if container == "mp4" else preparer.prepare(media[container])
    n = len(clip.audio)
    t = np.arange(n) / SR
    speech = (0.9 * np.sin(2 * np.pi * 200 * t[: n - 1000])).astype(np.float32)  # shorter
    background = (0.5 * np.sin(2 * np.pi * 90 * t)).astype(np.float32)  # sum peaks at 1.4
    out = preparer.mux(clip, speech, background, tmp_path / "dubbed.mp4")
    assert _video_md5(out) == _video_md5(clip.path)
    info = probe(out)
    assert abs(info.duration - clip.duration) <= 0.1, (info.duration, clip.duration)
    assert info.audio_codec == "aac" and info.channels == 1
    assert info.video_codec == clip.video_codec
    assert [p.name for p in tmp_path.iterdir()] == ["dubbed.mp4"]  # the mix WAV is gone
    streams = _streams(out)["streams"]
    assert [s["codec_type"] for s in streams] == ["video", "audio"]


def test_mux_failure_is_clean(media, tmp_path):
    with pytest.raises(MediaError) as info:
        mux_mp4(media["text"], np.zeros(100), np.zeros(SR), SR, tmp_path / "out.mp4",
                timeout=30, threads=1, memory_mb=1024)  # fmt: skip
    assert info.value.reason == "mux_error"
    assert str(media["text"].parent) not in info.value.detail
    assert str(tmp_path) not in info.value.detail


def test_limit_peaks_keeps_the_sum_below_the_ceiling():
    t = np.arange(SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 100 * t)).astype(np.float32)
    x[8000:8400] *= 5.0  # a burst peaking at 1.5
    y = limit_peaks(x, SR)
    assert np.abs(y).max() <= PEAK_CEILING
    np.testing.assert_array_equal(y[:7000], x[:7000])  # far from the burst: untouched
    assert np.abs(y[8000:8400]).max() > 0.9  # lowered, not flattened


def test_encode_wav_round_trips():
    t = np.arange(SR // 2) / SR
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    wave[10] = 3.0  # clipped to full scale
    data, rate = sf.read(io.BytesIO(encode_wav(wave, SR)), dtype="float32")
    info = sf.info(io.BytesIO(encode_wav(wave, SR)))
    assert (rate, info.channels, info.subtype) == (SR, 1, "PCM_16")
    assert data.shape == wave.shape and data[10] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(np.delete(data, 10), np.delete(wave, 10), atol=1 / 2**15)


def test_dialogue_and_background_without_separator(preparer, face_clip):
    assert not preparer.separates
    stems = preparer.dialogue_and_background(face_clip)
    assert not stems.separated
    np.testing.assert_array_equal(stems.dialogue, face_clip.audio)
    assert stems.background.shape == face_clip.audio.shape and not stems.background.any()


def test_dialogue_and_background_with_separator(tmp_path, media):
    make_tiny_mel_roformer(tmp_path)
    cfg = InputSection(
        faces={"enabled": False},
        separator={"model_dir": str(tmp_path), "model_filename": "tiny_mel_band_roformer.ckpt"},
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one replica CPU; two threads on a busy 2-core box crawl
    p = ClipPreparer(cfg, SR)
    try:
        clip = p.prepare(media["mp4"])
        stems = p.dialogue_and_background(clip)
    finally:
        p.close()
        torch.set_num_threads(threads)
    assert p.separates and stems.separated
    assert clip.frames == 50 and clip.lips is None and clip.face is None  # faces disabled
    for x in (stems.dialogue, stems.background):
        assert x.shape == clip.audio.shape and x.dtype == np.float32 and np.isfinite(x).all()


def test_settings_name_the_fix():
    with pytest.raises(ValueError, match="choose from"):
        InputSection(containers=("avi",))
    with pytest.raises(ValueError, match="copies only"):
        InputSection(video_codecs=("vp8",))
    with pytest.raises(ValueError, match="must be below"):
        InputSection(min_reference_seconds=5, max_reference_seconds=2)
