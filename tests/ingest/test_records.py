"""Record contracts: round trips, schema versions, keys Ray Data can read."""

from __future__ import annotations

import pytest

from dubforge.ingest.records import (
    SCHEMA_VERSION,
    ClipSpec,
    ManifestRow,
    MediaInput,
    SchemaError,
    clip_key,
)  # fmt: skip


def test_round_trips():
    clip = ClipSpec("movie_000", 3, 1.0, 2.5, "Hi.", True, (4, 5), {"gender": "female"})
    assert ClipSpec.from_dict(clip.to_dict()) == clip
    row = ManifestRow("clip", "/x.mp4", "x", 3, "rejected", "low_energy", "speech -55 dB")
    assert ManifestRow.from_dict(row.to_dict()) == row
    inp = MediaInput("/m/x.mp4", "movie", 10, subtitles="/m/x.srt")
    assert MediaInput.from_dict(inp.to_dict()) == inp


def test_unknown_schema_version_is_refused():
    d = ClipSpec("m", 0, 0.0, 1.0, "a").to_dict()
    with pytest.raises(SchemaError, match=f"reads version {SCHEMA_VERSION}"):
        ClipSpec.from_dict({**d, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(SchemaError, match="lacks required fields"):
        ClipSpec.from_dict({"schema_version": SCHEMA_VERSION, "input_id": "m"})


def test_keys_have_no_dots():
    assert clip_key("movie_000", 7) == "movie_000/00007"
    assert MediaInput("/d/film.v2.final.mp4", "movie", 1).input_id == "film_v2_final"
    with pytest.raises(ValueError, match="dot"):
        clip_key("a.b", 0)


def test_manifest_row_validation():
    with pytest.raises(ValueError, match="status"):
        ManifestRow("input", "/x", "x", -1, "maybe")
    with pytest.raises(ValueError, match="reason"):
        ManifestRow("input", "/x", "x", -1, "rejected")
    with pytest.raises(ValueError, match="row_type"):
        ManifestRow("sidecar", "/x", "x", -1, "accepted")
    with pytest.raises(ValueError, match="split"):
        ManifestRow("clip", "/x", "x", 0, "accepted", split="holdout")
