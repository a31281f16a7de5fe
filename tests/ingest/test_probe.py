"""Probing real files, including the broken kinds: each gets its own reason."""

from __future__ import annotations

import pytest

from dubforge.ingest.probe import MediaError, ProbeLimits, check, probe, verify_decode

LIMITS = ProbeLimits()


def test_good_movie(media_dir):
    info = probe(media_dir / "good.mp4")
    assert info.has_video and info.has_audio
    assert (info.width, info.height, info.fps) == (320, 240, 25.0)
    assert (info.sample_rate, info.channels) == (48000, 2)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert abs(info.duration - 6.0) < 0.1
    check(info, need_video=True, limits=LIMITS)
    assert abs(verify_decode(media_dir / "good.mp4", info, LIMITS) - info.duration) < 0.1


def test_truncated_fast_start_mp4_probes_whole_but_is_caught(media_dir):
    path = media_dir / "truncated.mp4"
    info = probe(path)
    assert info.duration > 11.5  # the trap: the index at the front still says 12 s
    with pytest.raises(MediaError) as err:
        verify_decode(path, info, LIMITS)
    assert err.value.reason == "truncated"


@pytest.mark.parametrize(
    "name, reason",
    [("empty.mp4", "empty_file"), ("notmedia.mp4", "not_media"), ("gone.mp4", "missing_file")],
)
def test_unprobeable_files(media_dir, name, reason):
    with pytest.raises(MediaError) as err:
        probe(media_dir / name)
    assert err.value.reason == reason and err.value.detail


@pytest.mark.parametrize(
    "name, need_video, reason",
    [
        ("noaudio.mp4", True, "no_audio"),
        ("novideo.mp4", True, "no_video"),
        ("tiny.mp4", True, "absurd_resolution"),
    ],
)
def test_unusable_media(media_dir, name, need_video, reason):
    with pytest.raises(MediaError) as err:
        check(probe(media_dir / name), need_video=need_video, limits=LIMITS)
    assert err.value.reason == reason


def test_audio_only_is_fine_for_speech(media_dir):
    check(probe(media_dir / "novideo.mp4"), need_video=False, limits=LIMITS)
