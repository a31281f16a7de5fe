"""Typed job configs: one frozen pydantic model per job YAML, `key=value` overrides, and errors
that name the field and the fix.

A job YAML names its job (`job: synth`); `load_job` reads it, applies overrides, and validates it
into that job's config class before anything else (Ray, MLflow, storage) is touched.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class JobConfig(BaseModel):
    """Base of every job config: immutable, unknown keys rejected. `entrypoint` names the job's
    `main(cfg)` as "module:function"."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    entrypoint: ClassVar[str]

    job: str

    @classmethod
    def job_name(cls) -> str:
        default = cls.model_fields["job"].default
        return default if isinstance(default, str) else cls.__name__


class ConfigError(ValueError):
    """A job config that cannot be used; the message lists each bad field and how to fix it."""


def _registry() -> dict[str, type[JobConfig]]:
    # imported here so that loading a config never imports a job's heavy dependencies
    from dubforge.eval.job import EvaluateConfig
    from dubforge.ingest.config import IngestConfig
    from dubforge.serve.config import ServeConfig
    from dubforge.synth.config import SynthConfig
    from dubforge.train.config import CurriculumConfig

    return {
        "synth": SynthConfig,
        "ingest": IngestConfig,
        "curriculum": CurriculumConfig,
        "evaluate": EvaluateConfig,
        "serve": ServeConfig,
    }


def job_names() -> list[str]:
    return sorted(_registry())


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["a.b=3", "name=x"]` -> `{"a": {"b": 3}, "name": "x"}`; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value (e.g. movies=10)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override {item!r} sets a field inside {part!r}, which is a value"
                )
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: nested dicts merge, everything else in `update` replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"job file {path} does not exist (the shipped jobs are in jobs/)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, not {type(data).__name__}")
    return data


def build(cls: type[JobConfig], data: dict[str, Any], source: str = "the config") -> JobConfig:
    """Validate `data` into `cls`, turning pydantic's errors into one ConfigError."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        lines = [_describe(err, cls, source) for err in e.errors()]
        raise ConfigError(
            f"invalid {cls.job_name()} config in {source}:\n" + "\n".join(lines)
        ) from None


def load_job(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Read a job YAML, apply `key=value` overrides and validate it into its job's config."""
    data = merge(read_yaml(path), parse_overrides(overrides))
    jobs = _registry()
    name = data.get("job")
    if name not in jobs:
        raise ConfigError(
            f"job: {name!r} in {path} is not a known job; set `job:` to one of {sorted(jobs)}"
        )
    return build(jobs[name], data, str(path))


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The (nested) model class that holds the field at `loc`."""
    for part in loc:
        info = cls.model_fields.get(str(part))
        ann = info.annotation if info else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


def _describe(err: dict[str, Any], cls: type[BaseModel], source: str) -> str:
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        owner = _model_at(cls, err["loc"][:-1])
        known = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"known fields: {', '.join(known)}"
        return f"  - {field}: unknown field; {hint}"
    got = err.get("input")
    info = cls.model_fields.get(str(err["loc"][0])) if err["loc"] else None
    desc = f" ({info.description})" if info is not None and info.description else ""
    return (
        f"  - {field}: {err['msg']} (got {got!r}){desc}; fix it in {source} "
        f"or override with {field}=VALUE"
    )


def run(cfg: JobConfig) -> int:
    """Call the job's `main(cfg)`; its return value is the process exit code."""
    import importlib

    module, _, func = cfg.entrypoint.partition(":")
    return int(getattr(importlib.import_module(module), func)(cfg) or 0)
