"""Generated bad requests for POST /v1/dub and its neighbours: each case is a name and a `send`
that returns (status, body). Media faults, field faults, body faults and header faults."""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

Send = Callable[[Any], tuple[int, str]]


def _post(
    files: list[tuple[str, tuple]] | None = None,
    data: bytes | dict | None = None,
    headers: dict[str, str] | None = None,
    auth: bool = True,
    path: str = "/v1/dub",
    method: str = "POST",
) -> Send:
    def send(service) -> tuple[int, str]:
        h = {**(service.auth() if auth else {}), **(headers or {})}
        r = requests.request(
            method, f"{service.url}{path}", files=files, data=data, headers=h, timeout=120
        )
        return r.status_code, r.text

    return send


def _raw(head: str, body: bytes = b"") -> Send:
    """A hand-written HTTP/1.1 request (for what requests refuses to send)."""

    def send(service) -> tuple[int, str]:
        host, port = service.url.removeprefix("http://").split(":")
        text = head.replace("{token}", service.token).replace("{host}", host)
        with socket.create_connection((host, int(port)), timeout=60) as s:
            s.sendall(text.encode("latin-1") + body)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        status_line, _, rest = reply.decode("latin-1").partition("\r\n")
        status = int(status_line.split()[1]) if status_line.startswith("HTTP/") else -1
        return status, rest.partition("\r\n\r\n")[2]

    return send


def _form(video: bytes | None, **fields: str | bytes) -> list[tuple[str, tuple]]:
    parts: list[tuple[str, tuple]] = []
    if video is not None:
        parts.append(("video", ("clip.mp4", video, "video/mp4")))
    for name, value in fields.items():
        parts.append((name, (None, value)))
    return parts


def bad_requests(clips: dict[str, Path], seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    clip = clips["clip"].read_bytes()
    ref = clips["ref"].read_bytes()
    text = "A new line."
    cases: list[dict[str, Any]] = []

    def add(name: str, send: Send) -> None:
        cases.append({"name": name, "send": send})

    for i in range(30):  # random bytes as the video
        n = rng.choice([0, 1, 17, 512, 4096, 65536])
        add(f"random-video-{i}", _post(_form(rng.randbytes(n), text=text)))
    for i in range(20):  # truncated mp4
        cut = int(len(clip) * rng.uniform(0.02, 0.9))
        add(f"truncated-mp4-{i}", _post(_form(clip[:cut], text=text)))
    for i in range(6):  # audio where the video goes
        add(f"audio-as-video-{i}", _post(_form(ref, text=text)))
    for i, t in enumerate(["", " ", "\n\t", "   \r\n  ", "\u200b" * 0]):
        add(f"empty-text-{i}", _post(_form(clip, text=t)))
    for i in range(5):
        add(f"long-text-{i}", _post(_form(clip, text="word " * (2000 + i * 500))))
    for i in range(20):  # not UTF-8
        junk = bytes(
            rng.choice([0xFF, 0xFE, 0xC3, 0x80, 0xED, 0xA0]) for _ in range(rng.randint(1, 40))
        )
        add(f"non-utf8-text-{i}", _post(_form(clip, text=b"ok " + junk)))
    bad_scales = ["NaN", "Infinity", "-Infinity", -1, -0.5, 21, 1e6, 1e308, "2", None, True, [1]]
    for i in range(30):
        g = {"video": 1.0, "labels": 1.0, "text": 1.0}
        g[rng.choice(list(g))] = rng.choice(bad_scales)
        raw = json.dumps(g).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
        raw = raw.replace('"-Infinity"', "-Infinity")
        add(f"guidance-{i}", _post(_form(clip, text=text, guidance=raw)))
    for i, g in enumerate(
        ["{", "[]", "1", '"x"', "{}", '{"video": 1}', "null", "nan", "{" * 3000, "🙂"]
    ):
        add(f"guidance-shape-{i}", _post(_form(clip, text=text, guidance=g)))
    for i, v in enumerate(
        [
            "NaN",
            "-1",
            "0",
            "1e9",
            str(10**30),
            "abc",
            "3.5",
            "",
            " ",
            "65",
            "-0",
            "0x10",
            "inf",
            "1_0000",
            "٣",
            "17",
        ]
    ):
        add(f"nfe-{i}", _post(_form(clip, text=text, nfe=v)))
    for i, v in enumerate(["-5", str(2**40), "x", "1.5", "", "NaN", "-1e3", "∞"]):
        add(f"seed-{i}", _post(_form(clip, text=text, seed=v)))
    for i, v in enumerate(["nan", "2", "-2", "x", "inf", ""]):
        add(f"sway-{i}", _post(_form(clip, text=text, sway=v)))
    for i, ct in enumerate(
        [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "video/mp4",
            "multipart/mixed; boundary=x",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "image/png",
            "",
            "x" * 300,
        ]
    ):
        for j, payload in enumerate([b'{"text": "hi"}', clip[:2048]]):
            add(f"content-type-{i}-{j}", _post(data=payload, headers={"Content-Type": ct}))
    add("no-body", _post(data=b""))
    add("no-video", _post(_form(None, text=text)))
    add("no-text", _post(_form(clip)))
    add("nothing", _post(_form(None, seed="1")))
    for i in range(6):
        add(f"missing-text-with-extras-{i}", _post(_form(clip, seed=str(i), nfe="8")))
    for i in range(5):
        add(f"duplicate-text-{i}", _post(_form(clip, text=text) + [("text", (None, "again"))]))
        add(f"duplicate-video-{i}", _post(_form(clip, text=text) + [("video", ("b.mp4", clip))]))
    for i in range(10):
        add(f"unknown-field-{i}", _post(_form(clip, text=text, **{f"extra{i}": "1"})))
    for i, lab in enumerate(
        [
            '{"mood": "x"}',
            '{"emotion": 3}',
            "[]",
            "{",
            '{"gender": ""}',
            '{"age": "' + "a" * 100 + '"}',
            "null",
            '{"emotion": null}',
            '{"scene_type": "x\\u0000"}',
            "1",
        ]
    ):
        add(f"labels-{i}", _post(_form(clip, text=text, labels=lab)))
    for i, f in enumerate(["avi", "WAV", "", "mp3", "../x", "wav;rm"]):
        add(f"format-{i}", _post(_form(clip, text=text, format=f)))
    for i, m in enumerate(["rk4", "", "EULER", "dopri5"]):
        add(f"method-{i}", _post(_form(clip, text=text, method=m)))
    for i in range(15):  # random bytes as the reference
        files = _form(clip, text=text) + [
            ("reference", ("r.wav", rng.randbytes(rng.choice([0, 10, 3000]))))
        ]
        add(f"random-reference-{i}", _post(files))
    silent = _wav_silence(16000, 2.0)
    for i in range(5):
        add(
            f"silent-reference-{i}",
            _post(_form(clip, text=text) + [("reference", ("s.wav", silent))]),
        )
    for i in range(20):  # broken multipart
        body = clip[:512]
        head = b'--bnd\r\nContent-Disposition: form-data; name="video"; filename="v"\r\n\r\n'
        pieces = [
            head + body,
            b"--bnd\r\n" + rng.randbytes(200),
            b"--bnd--",
            rng.randbytes(300),
            head + body + b"\r\n--bn",
            b"\r\n\r\n--bnd\r\nContent-Disposition: form-data\r\n\r\nx\r\n--bnd--\r\n",
        ]
        add(
            f"broken-multipart-{i}",
            _post(
                data=pieces[i % len(pieces)],
                headers={"Content-Type": "multipart/form-data; boundary=bnd"},
            ),
        )
    for i, uri in enumerate(
        [
            "/etc/passwd",
            "file:///etc/shadow",
            "../x.mp4",
            "s3://other/x.mp4",
            "http://169.254.169.254/latest",
            "gs://b/../../x",
            "C:\\x.mp4",
            "file://localhost/etc/passwd",
            "~/.ssh/id_rsa",
            "s3:/x",
        ]
    ):
        add(f"uri-{i}", _post(_form(None, text=text, video_uri=uri)))
        add(f"ref-uri-{i}", _post(_form(clip, text=text, reference_uri=uri)))
    for i in range(4):
        add(
            f"huge-header-{i}",
            _post(_form(clip, text=text), headers={"X-Big": "a" * (20000 * (i + 1))}),
        )
    add(
        "huge-auth",
        _post(
            _form(clip, text=text), headers={"Authorization": "Bearer " + "x" * 60000}, auth=False
        ),
    )
    add(
        "huge-content-type",
        _post(data=b"x", headers={"Content-Type": "multipart/form-data; boundary=" + "b" * 5000}),
    )
    for m in ("GET", "PUT", "DELETE", "PATCH"):
        add(f"method-{m}", _post(method=m))
    for i, p in enumerate(
        ["/v1/nope", "/v2/dub", "/v1/dub/../../etc", "/%2e%2e/etc/passwd", "/v1/models/x"]
    ):
        add(f"path-{i}", _post(path=p, method="GET"))
    for i, cl in enumerate(["abc", "-1", "1" * 30]):
        add(
            f"content-length-{i}",
            _raw(
                "POST /v1/dub HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {cl}\r\n"
                "Connection: close\r\n\r\n",
                b"--b--\r\n",
            ),
        )
    for i in range(5):
        add(f"no-token-{i}", _post(_form(clip, text=text), auth=False))
        add(
            f"wrong-token-{i}",
            _post(
                _form(clip, text=text),
                auth=False,
                headers={"Authorization": f"Bearer {rng.randbytes(8).hex()}"},
            ),
        )
    return cases


def _wav_silence(sr: int, seconds: float) -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(sr * seconds), dtype=np.float32), sr, format="WAV")
    return buf.getvalue()
