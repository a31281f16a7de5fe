"""A file that disappears while the job runs is a recorded rejection, never a crash."""

from __future__ import annotations

import shutil

from dubforge.ingest.config import IngestConfig
from dubforge.ingest.discover import discover
from dubforge.ingest.plan import make_units, plan_unit
from dubforge.ingest.stages import Decode, _batch, rows_of

SRT = "1\n00:00:01,000 --> 00:00:03,000\nHello there.\n\n2\n00:00:04,000 --> 00:00:05,500\nAgain.\n"


def _setup(tmp_path, media_dir):
    root = tmp_path / "movies"
    root.mkdir()
    for name in ("a", "b"):
        shutil.copy(media_dir / "good.mp4", root / f"{name}.mp4")
        (root / f"{name}.srt").write_text(SRT)
    cfg = IngestConfig(input=[str(root)], output=str(tmp_path / "out"),
                       codec={"name_or_path": "unused"})  # fmt: skip
    units = {u.name: u.to_dict() for u in make_units(discover(cfg.input).inputs, 64)}
    return root, cfg, units


def test_vanished_before_probe_is_rejected(tmp_path, media_dir):
    root, cfg, units = _setup(tmp_path, media_dir)
    (root / "a.mp4").unlink()
    rows = plan_unit(units["a"], cfg)
    assert [(r["clip_no"], r["status"], r["reason"]) for r in rows] == [
        (-1, "rejected", "missing_file")
    ]
    assert "deleted during the run" in rows[0]["detail"]
    other = plan_unit(units["b"], cfg)
    assert [r["clip_no"] for r in other] == [-1, 0, 1] and all(r["unit_total"] == 3 for r in other)


def test_vanished_after_planning_rejects_its_clips(tmp_path, media_dir):
    root, cfg, units = _setup(tmp_path, media_dir)
    rows = plan_unit(units["a"], cfg)
    (root / "a.mp4").unlink()
    out = rows_of(Decode(cfg, 24000)(_batch(rows)))
    assert len(out) == len(rows) == 3
    assert out[0]["status"] == "accepted"  # the input row was decided while the file existed
    assert [(r["status"], r["reason"]) for r in out[1:]] == [("rejected", "missing_file")] * 2
    assert all("audio" not in r and "frames" not in r for r in out)
