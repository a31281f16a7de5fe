"""Train fixtures: learnable shards and the debug curriculum pointed at them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dubforge.train.config import CurriculumConfig
from tests.train.corpus import make_shards

REPO = Path(__file__).resolve().parents[2]
DEBUG_JOB = REPO / "jobs" / "curriculum_debug.yaml"


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory) -> Path:
    """movies/ (12 clips in 3 shards) and speech/ (12 clips in 3 shards)."""
    return make_shards(tmp_path_factory.mktemp("train_shards"))


def debug_dict(**updates: Any) -> dict[str, Any]:
    data = yaml.safe_load(DEBUG_JOB.read_text())
    data.update(updates)
    return data


@pytest.fixture
def debug_cfg(train_shards) -> CurriculumConfig:
    return CurriculumConfig.model_validate(debug_dict(shards=str(train_shards)))
