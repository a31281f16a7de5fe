"""Finding movies with their sidecars and speech utterances with their transcripts."""

from __future__ import annotations

import pytest

from dubforge.ingest.discover import discover


def _touch(path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_movies_sidecars_stems_and_speech(tmp_path):
    m = tmp_path / "movies"
    names = ["a.mp4", "a.srt", "a.vtt", "a.labels.json", "a.dialogue.wav", "a.me.flac", "b.mkv",
             "b.vtt", "c.mov", "c.dialogue.wav", "notes.txt", "orphan.srt"]  # fmt: skip
    for name in names:
        _touch(m / name)
    s = tmp_path / "speech"
    _touch(s / "spk1" / "u1.wav")
    _touch(s / "spk1" / "u1.txt", b"Hello there.\n")
    _touch(s / "spk2" / "u2.flac")
    _touch(s / "spk2" / "u3.wav")
    _touch(s / "metadata.csv", b"path|speaker|text\nspk2/u2.flac|anna|From the csv.\n")
    discovery = discover([str(m), f"file://{s}"])
    found = {i.uri.removeprefix(str(tmp_path) + "/"): i for i in discovery.inputs}
    assert sorted(found) == [
        "movies/a.mp4", "movies/b.mkv", "movies/c.mov",
        "speech/spk1/u1.wav", "speech/spk2/u2.flac", "speech/spk2/u3.wav",
    ]  # fmt: skip
    a, b, c = found["movies/a.mp4"], found["movies/b.mkv"], found["movies/c.mov"]
    assert a.subtitles.endswith("a.srt") and a.labels.endswith("a.labels.json")  # srt over vtt
    assert a.stems == {"speech": str(m / "a.dialogue.wav"), "background": str(m / "a.me.flac")}
    assert b.subtitles.endswith("b.vtt") and b.labels is None and b.stems is None
    assert c.subtitles is None and c.stems is None  # one stem alone is not a delivery
    u1, u2, u3 = (found[f"speech/{k}"] for k in ("spk1/u1.wav", "spk2/u2.flac", "spk2/u3.wav"))
    assert (u1.kind, u1.transcript, u1.speaker) == ("speech", "Hello there.", "spk1")
    assert (u2.transcript, u2.speaker) == ("From the csv.", "anna")
    assert (u3.kind, u3.transcript) == ("audio", None)  # audio with no text: probe decides
    assert u1.input_id == "spk1__u1" and a.input_id == "a"
    files = {f.uri.removeprefix(str(tmp_path) + "/"): (f.status, f.reason) for f in discovery.files}
    assert files == {
        "movies/a.srt": ("accepted", "sidecar"),
        "movies/a.vtt": ("rejected", "ignored_sidecar"),
        "movies/a.labels.json": ("accepted", "sidecar"),
        "movies/a.dialogue.wav": ("accepted", "sidecar"),
        "movies/a.me.flac": ("accepted", "sidecar"),
        "movies/b.vtt": ("accepted", "sidecar"),
        "movies/c.dialogue.wav": ("rejected", "lone_stem"),
        "movies/notes.txt": ("rejected", "ignored_sidecar"),
        "movies/orphan.srt": ("rejected", "orphan_subtitles"),
        "speech/spk1/u1.txt": ("accepted", "sidecar"),
        "speech/metadata.csv": ("accepted", "sidecar"),
    }
    every = {str(p) for p in tmp_path.rglob("*") if p.is_file()}
    assert every == {i.uri for i in discovery.inputs} | {f.uri for f in discovery.files}


def test_synth_corpus_is_discovered_whole(tmp_path):
    from dubforge.synth.config import SynthConfig
    from dubforge.synth.corpus import generate

    root = tmp_path / "c"
    generate(SynthConfig(output=str(root), movies=2, duration=8.0, scene_seconds=8.0,
                         speech_utterances=3, speech_speakers=1, workers=1))  # fmt: skip
    found = discover([str(root / "movies"), str(root / "speech")]).inputs
    movies = [i for i in found if i.kind == "movie"]
    speech = [i for i in found if i.kind == "speech"]
    assert [i.input_id for i in movies] == ["movie_000", "movie_001"]
    assert movies[0].subtitles.endswith(".srt") and movies[1].subtitles.endswith(".vtt")
    assert all(i.labels for i in movies)
    assert all(i.stems and i.stems["speech"].endswith(".dialogue.flac") for i in movies)
    assert len(speech) == 3 and all(i.transcript and i.speaker == "reader_00" for i in speech)


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover([str(tmp_path / "nope")])
