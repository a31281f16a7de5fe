"""The dubbing service on real Ray Serve (random-weight tiny export): answers, batching, auth and
limits, ≥ 300 bad requests, autoscaling 1 → 2 → 1, and a model replica killed under load.
Ordered: the replica kill comes last."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import soundfile as sf

from tests.conftest import VENV_BIN
from tests.serve.conftest import SERVICE_OVERRIDES
from tests.serve.fuzz import bad_requests

pytestmark = pytest.mark.timeout(900)
FPS = 25


def dub(
    service,
    video,
    text="A brand new line for this scene.",
    *,
    seed=0,
    fmt="wav",
    extra=None,
    timeout=120,
    **files,
):
    data = {"text": text, "seed": str(seed), "format": fmt, **(extra or {})}
    with open(video, "rb") as v:
        opened = {"video": ("clip.mp4", v)}
        handles = [open(p, "rb") for p in files.values()]  # noqa: SIM115
        try:
            opened.update({k: (f"{k}.bin", h) for k, h in zip(files, handles, strict=True)})
            return requests.post(
                f"{service.url}/v1/dub",
                data=data,
                files=opened,
                headers=service.auth(),
                timeout=timeout,
            )
        finally:
            for h in handles:
                h.close()


def wave_of(r: requests.Response) -> tuple[np.ndarray, int]:
    x, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    return x, sr


def duration(path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return float(out.stdout.strip())


def video_md5(path) -> str:
    out = subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            "0:v:0",
            "-c",
            "copy",
            "-f",
            "md5",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def test_a_clip_is_dubbed_to_its_length_and_the_same_seed_gives_the_same_bytes(service, clips):
    first = dub(service, clips["clip"], seed=3, reference=clips["ref"])
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "audio/wav"
    assert first.headers["X-Dubforge-Random-Weights"] == "true"
    wave, sr = wave_of(first)
    hop = sr / 100  # within one latent frame of the clip's length
    assert abs(len(wave) - duration(clips["clip"]) * sr) <= max(hop, sr / FPS)
    again = dub(service, clips["clip"], seed=3, reference=clips["ref"])
    assert again.status_code == 200 and again.content == first.content
    other = dub(service, clips["clip"], seed=4, reference=clips["ref"])
    assert other.status_code == 200 and other.content != first.content
    # no reference upload: the clip's own dialogue is the voice
    own = dub(service, clips["clip"], seed=3)
    assert own.status_code == 200 and len(wave_of(own)[0]) == len(wave)


def test_mp4_answer_keeps_the_video_stream_bit_exact(service, clips, tmp_path):
    r = dub(service, clips["clip"], fmt="mp4", reference=clips["ref"])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    out = tmp_path / "dubbed.mp4"
    out.write_bytes(r.content)
    assert video_md5(out) == video_md5(clips["clip"])
    assert abs(duration(out) - duration(clips["clip"])) < 0.1


def test_models_describes_the_export(service):
    r = requests.get(f"{service.url}/v1/models", headers=service.auth(), timeout=30)
    assert r.status_code == 200
    (info,) = r.json()["data"]
    assert info["random_weights"] is True and info["preset"] == "tiny"
    for key in ("name", "version", "space", "vocoder", "run_id", "guidance"):
        assert key in info, key


def test_concurrent_requests_are_batched_and_match_their_unbatched_answers(service, clips):
    seeds = list(range(10, 18))
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda s: dub(service, clips["clip"], seed=s, reference=clips["ref"]), seeds)
        )
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    batches = {r.headers["X-Dubforge-Batch"] for r in answers}
    assert len(batches) < len(seeds), batches  # fewer model calls than requests
    assert max(int(b.split("/")[1]) for b in batches) > 1
    for seed, batched in zip(seeds[:3], answers[:3], strict=True):
        alone = dub(service, clips["clip"], seed=seed, reference=clips["ref"])
        assert alone.headers["X-Dubforge-Batch"].endswith("/1")
        a, b = wave_of(alone)[0], wave_of(batched)[0]
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=3e-3)


def test_a_token_is_required_everywhere_but_health(service, clips):
    url = service.url
    assert requests.get(f"{url}/v1/health", timeout=10).status_code == 200
    for path in ("/v1/models", "/docs", "/openapi.json"):
        r = requests.get(f"{url}{path}", timeout=10)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
        wrong = requests.get(f"{url}{path}", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401
    assert requests.get(f"{url}/docs", headers=service.auth(), timeout=10).status_code == 200
    spec = requests.get(f"{url}/openapi.json", headers=service.auth(), timeout=10).json()
    assert "/v1/dub" in spec["paths"]
    with open(clips["clip"], "rb") as v:
        r = requests.post(f"{url}/v1/dub", data={"text": "hi"}, files={"video": v}, timeout=30)
    assert r.status_code == 401


def test_an_oversized_upload_is_refused_before_it_is_read(service):
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(
            (
                f"POST /v1/dub HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {service.token}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {10 * 2**30}\r\n\r\n"
            ).encode()
            + b"--b\r\n"
        )
        t0 = time.monotonic()
        reply = s.recv(65536).decode("latin-1")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert time.monotonic() - t0 < 10

    # a chunked body (no Content-Length) is cut off once it crosses the limit
    def body():
        yield b'--b\r\nContent-Disposition: form-data; name="video"; filename="v"\r\n\r\n'
        for _ in range(64):
            yield b"\0" * 2**17

    r = requests.post(
        f"{service.url}/v1/dub",
        data=body(),
        timeout=60,
        headers={**service.auth(), "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413 and r.json()["error"]


def test_requests_cannot_name_server_paths(service):
    for uri in ("/etc/passwd", "file:///etc/passwd", "../../etc/passwd", "s3://bucket/x.mp4"):
        r = requests.post(
            f"{service.url}/v1/dub",
            files={"text": (None, "hi"), "video_uri": (None, uri)},
            headers=service.auth(),
            timeout=30,
        )
        assert r.status_code == 400, (uri, r.text)
        assert r.json()["detail"].startswith("video_uri"), r.text


def test_media_limits_answer_4xx(service, clips):
    r = dub(service, clips["long"])
    assert r.status_code == 422 and r.json()["detail"].startswith("video"), r.text
    with open(clips["ref"], "rb") as f:  # audio where the video goes
        r = requests.post(
            f"{service.url}/v1/dub",
            data={"text": "hi"},
            files={"video": ("a.mp4", f)},
            headers=service.auth(),
            timeout=60,
        )
    assert r.status_code == 415 and r.json()["detail"].startswith("video"), r.text


def test_three_hundred_bad_requests_get_4xx_json_and_the_service_survives(service, clips):
    cases = bad_requests(clips, seed=0)
    assert len(cases) >= 300

    def send(case):
        name, method = case["name"], case.pop("send")
        try:
            status, body = method(service)
        except requests.RequestException as e:
            return name, -1, str(e)
        return name, status, body

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(send, cases))
    wrong = []
    for name, status, body in results:
        if not 400 <= status < 500:
            wrong.append((name, status, body[:200]))
            continue
        if name.startswith("content-length-") and body == "Invalid HTTP request received.":
            continue  # refused by the HTTP server's parser, before any application code

        try:
            data = json.loads(body)
        except ValueError:
            wrong.append((name, status, "not JSON: " + body[:200]))
            continue
        if set(data) != {"error", "detail"} or "Traceback" in body or "/tmp/" in body:
            wrong.append((name, status, body[:200]))
    assert not wrong, [(n, s, b[:80]) for n, s, b in wrong]
    ok = dub(service, clips["clip"], seed=1, reference=clips["ref"])
    assert ok.status_code == 200


def _replicas(service) -> int:
    out = service.driver(
        "from ray import serve\n"
        "st = serve.status().applications['dubforge'].deployments['DubberModel']\n"
        "print(json.dumps(st.replica_states))"
    )
    return sum(json.loads(out.strip().splitlines()[-1]).values())


def test_the_model_deployment_scales_up_under_load_and_back_down(service, clips):
    assert _replicas(service) == 1
    stop = threading.Event()

    def load():
        while not stop.is_set():
            dub(service, clips["clip"], seed=5, reference=clips["ref"], extra={"nfe": "16"})

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    seen = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen.append(_replicas(service))
            if seen[-1] >= 2:
                break
            time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert max(seen) == 2, seen
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _replicas(service) != 1:
        time.sleep(2)
    assert _replicas(service) == 1


def test_a_full_model_queue_answers_429_not_5xx(service, clips):
    """8 ongoing + 24 queued per replica (SERVICE_OVERRIDES): a burst of 48 lines of one clip
    overflows the queue; the overflow gets 429 with Retry-After, the rest are dubbed."""
    with ThreadPoolExecutor(48) as pool:
        answers = list(
            pool.map(lambda s: dub(service, clips["clip"], seed=s, extra={"nfe": "4"}), range(48))
        )
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0 and statuses.count(200) >= 8, statuses
    busy = next(r for r in answers if r.status_code == 429)
    assert busy.json()["error"] == "busy" and busy.headers["Retry-After"]


def test_a_changed_config_rolls_out_with_serve_deploy_while_requests_flow(
    service, clips, tmp_path, repo
):
    """A new export rolled out the operator's way: `dubforge serve --build` then `serve deploy`
    of the file; requests sent throughout keep being answered."""
    from dubforge.model.checkpoint import save_checkpoint
    from dubforge.model.presets import space_from_config
    from dubforge.serve.source import random_export

    ck = random_export("tiny")
    export = save_checkpoint(
        tmp_path / "export-v2",
        ck.model,
        ck.config,
        space_from_config(ck.config.space),
        stage="rollout",
        step=7,
    )
    token_file = tmp_path / "token"
    token_file.write_text(service.token)
    token_file.chmod(0o600)
    port = service.url.rsplit(":", 1)[1]
    built = tmp_path / "serve_config.yaml"
    subprocess.run(
        [
            str(VENV_BIN / "dubforge"),
            "serve",
            "jobs/serve_debug.yaml",
            f"port={port}",
            f"model={export}",
            f"cache_dir={tmp_path / 'cache'}",
            f"auth.token_file={token_file}",
            *SERVICE_OVERRIDES,
            "--build",
            str(built),
        ],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=120,
    )
    stop, statuses = threading.Event(), []

    def traffic():
        while not stop.is_set():
            statuses.append(dub(service, clips["clip"], seed=9, reference=clips["ref"]).status_code)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        deployed = service.cluster.run(
            [str(VENV_BIN / "serve"), "deploy", str(built), "-a", service.cluster.dashboard],
            timeout=120,
        )
        assert deployed.returncode == 0, deployed.stderr[-2000:]
        deadline = time.monotonic() + 150
        while True:
            info = requests.get(f"{service.url}/v1/models", headers=service.auth(), timeout=30)
            if (
                info.status_code == 200
                and info.json()["data"][0]["training"].get("stage") == "rollout"
            ):
                break
            if time.monotonic() > deadline:
                status = service.cluster.run(
                    [str(VENV_BIN / "serve"), "status", "-a", service.cluster.dashboard]
                )
                pytest.fail(f"not rolled out:\n{status.stdout[-6000:]}\n{status.stderr[-2000:]}")
            time.sleep(2)
        time.sleep(3)
    finally:
        stop.set()
        sender.join(180)
    assert statuses and set(statuses) == {200}, statuses
    (info,) = requests.get(f"{service.url}/v1/models", headers=service.auth(), timeout=30).json()[
        "data"
    ]
    assert info["random_weights"] is False and info["source"] == str(export)


def test_a_killed_model_replica_is_replaced_and_no_request_hangs(service, clips):
    pid = int(
        service.driver(
            "from ray import serve\n"
            "h = serve.get_deployment_handle('DubberModel', app_name='dubforge')\n"
            "print(h.stats.remote().result()['pid'])"
        )
        .strip()
        .splitlines()[-1]
    )
    statuses: list[int] = []
    timeout = 120 + 30  # the service's request_timeout_s, plus transport

    def one(seed):
        t0 = time.monotonic()
        r = dub(service, clips["clip"], seed=seed, reference=clips["ref"], timeout=timeout)
        return r.status_code, time.monotonic() - t0

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(one, s) for s in range(12)]
        time.sleep(1.5)
        os.kill(pid, signal.SIGKILL)
        results = [f.result() for f in futures]
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503, 504}, statuses
    assert all(dt < timeout for _, dt in results)
    deadline = time.monotonic() + 180
    while True:
        r = dub(service, clips["clip"], seed=2, reference=clips["ref"])
        if r.status_code == 200:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(3)
