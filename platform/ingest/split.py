"""Held-out splits: every movie and every speech-corpus speaker goes to `train`, `val` or `test`
by a hash of its id, so the assignment is the same on every run and every machine, and no movie
or speaker has clips in two splits. Ids can be pinned to a split explicitly."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from dubforge.schema import SPLITS


def unit_interval(split_id: str, salt: str = "") -> float:
    """A uniform number in [0, 1) from the id (sha256: stable across Python versions and
    machines, unlike hash())."""
    digest = hashlib.sha256(f"{salt}{split_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(
    split_id: str,
    *,
    fractions: Mapping[str, float],
    pinned: Mapping[str, Sequence[str]],
    salt: str,
) -> str:
    """The split of `split_id` ("movie:<id>" or "speaker:<name>"; a pinned entry may name the
    id with or without its prefix)."""
    bare = split_id.split(":", 1)[-1]
    for name in SPLITS:
        ids = pinned.get(name, ())
        if split_id in ids or bare in ids:
            return name
    u = unit_interval(split_id, salt)
    edge = 0.0
    for name in SPLITS:
        edge += fractions.get(name, 0.0)
        if u < edge:
            return name
    return SPLITS[0]
