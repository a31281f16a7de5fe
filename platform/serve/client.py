"""A client of the dubbing service (`dubforge client dub URL ...`), used by the tests, the load
bench and whole-movie dubbing against an endpoint. The token comes from DUBFORGE_API_TOKEN
unless given."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

TOKEN_ENV = "DUBFORGE_API_TOKEN"


class ServiceError(RuntimeError):
    """A non-200 answer: `status`, and the service's `error` code and `detail`."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True)
class Dubbed:
    content: bytes
    media_type: str
    headers: Mapping[str, str]
    seconds: float  # wall time of the request


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self.timeout = timeout
        self.session = requests.Session()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @staticmethod
    def _check(r: requests.Response) -> requests.Response:
        if r.status_code == 200:
            return r
        try:
            body = r.json()
            error, detail = str(body.get("error", "")), str(body.get("detail", ""))
        except ValueError:
            error, detail = "not_json", r.text[:200]
        raise ServiceError(r.status_code, error, detail)

    def health(self) -> dict[str, Any]:
        return self._check(self.session.get(f"{self.url}/v1/health", timeout=10)).json()

    def models(self) -> dict[str, Any]:
        r = self.session.get(f"{self.url}/v1/models", headers=self._headers(), timeout=30)
        return self._check(r).json()

    def dub(
        self,
        video: str | Path,
        text: str,
        *,
        reference: str | Path | None = None,
        reference_text: str | None = None,
        labels: Mapping[str, str] | None = None,
        guidance: tuple[float, float, float] | str | None = None,
        nfe: int | None = None,
        seed: int | None = None,
        format: str = "wav",
    ) -> Dubbed:
        """POST /v1/dub with a local clip (and reference); raises ServiceError on non-200."""
        fields: dict[str, str] = {"text": text, "format": format}
        if reference_text:
            fields["reference_text"] = reference_text
        if labels:
            fields["labels"] = json.dumps(dict(labels))
        if isinstance(guidance, str):
            fields["guidance"] = guidance
        elif guidance is not None:
            fields["guidance"] = json.dumps(
                dict(zip(("video", "labels", "text"), guidance, strict=True))
            )
        if nfe is not None:
            fields["nfe"] = str(nfe)
        if seed is not None:
            fields["seed"] = str(seed)
        with open(video, "rb") as v:
            files: dict[str, Any] = {"video": (Path(video).name, v)}
            ref = open(reference, "rb") if reference else None  # noqa: SIM115
            try:
                if ref is not None:
                    files["reference"] = (Path(str(reference)).name, ref)
                r = self.session.post(
                    f"{self.url}/v1/dub",
                    data=fields,
                    files=files,
                    headers=self._headers(),
                    timeout=self.timeout,
                )
            finally:
                if ref is not None:
                    ref.close()
        self._check(r)
        return Dubbed(
            r.content,
            r.headers.get("content-type", ""),
            r.headers,
            r.elapsed.total_seconds(),
        )
