"""The tree stays ruff-clean (lint and format), so CI enforces the house style."""

from __future__ import annotations

import subprocess

from tests.conftest import REPO, VENV_BIN


def test_ruff_check_and_format():
    for args in (["check", "."], ["format", "--check", "."]):
        out = subprocess.run(
            [str(VENV_BIN / "ruff"), *args], cwd=REPO, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stdout + out.stderr
