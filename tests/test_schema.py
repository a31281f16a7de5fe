"""The clip contract: one typed record, refused when foreign, constants in one home."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dubforge.model.batch import split_row
from dubforge.schema import SCHEMA_VERSION, ClipRecord, CodecInfo, SchemaError
from dubforge.train.data import decode_rows

PLATFORM = Path(__file__).resolve().parents[1] / "platform"
CODEC = CodecInfo("encodec", 24000, 75.0, 8, "/models/encodec")


def _record(**kw) -> ClipRecord:
    base = dict(
        key="m/00001",
        movie_id="m",
        split="val",
        source="/m.mp4",
        kind="movie",
        start=1.0,
        end=2.2,
        text="Hi.",
        transcribed=True,
        codec=CODEC,
        tasks=("tts", "v2s"),
        mel_profile="hifigan_22k",
    )
    return ClipRecord(**{**base, **kw})


def test_round_trip_and_field_errors():
    rec = _record(labels={"gender": "female"}, extra={"note": 1})
    assert ClipRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    d = rec.to_dict()
    with pytest.raises(SchemaError, match="lacks the field 'split'"):
        ClipRecord.from_dict({k: v for k, v in d.items() if k != "split"})
    with pytest.raises(SchemaError, match="split 'holdout'"):
        ClipRecord.from_dict({**d, "split": "holdout"})
    with pytest.raises(SchemaError, match="field 'start' is '1'"):
        ClipRecord.from_dict({**d, "start": "1"})
    with pytest.raises(SchemaError, match="unknown mel profile"):
        ClipRecord.from_dict({**d, "mel_profile": "hop240"})
    with pytest.raises(SchemaError, match="without dots"):
        _record(key="m.v2/00001")


def test_arrays_are_checked_against_the_contract():
    rec = _record()
    lips = np.zeros((30, 96, 96), np.uint8)
    rec.check_arrays({"lips": lips, "speech.mel": np.zeros((80, 103), np.float16)})
    with pytest.raises(SchemaError, match="float32 with 2 dims; the contract says float16"):
        rec.check_arrays({"speech.mel": np.zeros((80, 103), np.float32)})
    with pytest.raises(SchemaError, match="100 bins; profile hifigan_22k has 80"):
        rec.check_arrays({"speech.mel": np.zeros((100, 103), np.float16)})
    with pytest.raises(SchemaError, match="10 lip frames for a 1.200 s clip"):
        rec.check_arrays({"lips": lips[:10]})
    with pytest.raises(SchemaError, match="task 'v2s' claimed without a 'lips' array"):
        rec.check_arrays({})
    with pytest.raises(SchemaError, match="unknown array 'speech.wav'"):
        rec.check_arrays({"speech.wav": np.zeros(3, np.float32)})


def test_version_1_shards_are_refused_with_the_way_out():
    old = {**_record().to_dict(), "schema_version": 1}
    with pytest.raises(SchemaError, match=r"schema version 1 .*Re-ingest .*dubforge ingest"):
        ClipRecord.from_dict(old)
    with pytest.raises(SchemaError, match="Re-ingest"):
        split_row({"json": json.dumps(old).encode()})
    out = decode_rows(
        pd.DataFrame(
            [{"__key__": "m/00001", "__url__": "x.tar", "json": json.dumps(old).encode()}]
        ),
        {"speech": "speech.mel", "background": "bg.mel"},
        86.0,
        1.0,
        0,
    )
    assert "Re-ingest the source media" in out["error"][0]  # counted, not crashed
    newer = {**old, "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(SchemaError, match="upgrade dubforge"):
        ClipRecord.from_dict(newer)


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in sorted(PLATFORM.rglob("*.py"))]


def test_contract_constants_live_in_schema_alone():
    shared = {
        "FPS",
        "TASKS",
        "TASK_STREAMS",
        "VIDEO_TASKS",
        "TEXT_TASKS",
        "SPLITS",
        "STREAMS",
        "SCHEMA_VERSION",
        "MEL_PROFILES",
        "SCENE_TYPES",
    }
    homes: dict[str, list[str]] = {}
    for path, tree in _modules():
        for node in tree.body:
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else ([node.target] if isinstance(node, ast.AnnAssign) else [])
            )
            for t in targets:
                if isinstance(t, ast.Name) and t.id in shared:
                    homes.setdefault(t.id, []).append(path.name)
    assert {k: v for k, v in homes.items() if v != ["schema.py"]} == {}


def test_import_arrows():
    """schema imports nothing of ours; nothing imports another package's private names."""
    for path, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
                "dubforge"
            ):
                continue
            if path.name == "schema.py":
                pytest.fail(f"schema.py imports {node.module}")
            package = node.module.split(".")[1] if "." in node.module else ""
            own = path.parent.name if path.parent != PLATFORM else ""
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not (private and package != own), (path, node.module, private)


def test_no_record_field_read_with_a_default():
    for path, tree in _modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "meta"
            ):
                pytest.fail(f"{path}:{node.lineno} reads a record field with meta.get")
