"""A fault injected into Ray workers through `runtime_env["worker_process_setup_hook"]`: the
Tokenize stage raises for unit "b" in every worker process, as a bug in a stage would."""

from __future__ import annotations

from typing import Any


def tokenize_fails_for_b() -> None:
    from dubforge.ingest import stages

    real = stages.Tokenize._one

    def one(self: Any, row: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        if row["unit"] == "b":
            raise RuntimeError("injected fault")
        return real(self, row, *args, **kwargs)

    stages.Tokenize._one = one
