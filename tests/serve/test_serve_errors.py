"""Every kind of bad request gets a 4xx JSON error naming what was wrong, and the server
goes on serving; no request reaches a file the server was not given."""

from __future__ import annotations

import struct
import zlib

import pytest
from serve_helpers import png

from conftest import make_client

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def upload(data: bytes, name: str = "x.png", kind: str = "image/png") -> dict:
    return {"image": (name, data, kind)}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with almost no pixel data: a
    decompression bomb as far as any reader that trusts the header is concerned."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def expect_error(response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    for word in words:
        assert word in body["error"], (word, body["error"])
    return body["error"]


IMAGE_ENDPOINTS = ["/api/classify", "/api/caption", "/api/saliency", "/api/explain"]


@pytest.mark.parametrize("path", IMAGE_ENDPOINTS)
def test_empty_file(tiny_client, path):
    expect_error(tiny_client.post(path, files=upload(b"")), 400, "image", "empty")


@pytest.mark.parametrize("path", IMAGE_ENDPOINTS)
def test_not_an_image(tiny_client, path):
    r = tiny_client.post(path, files=upload(b"%PDF-1.7 this is a document", "doc.pdf"))
    expect_error(r, 415, "image", "not an image", "%PDF")


def test_binary_garbage_is_described_in_hex(tiny_client):
    r = tiny_client.post("/api/classify", files=upload(bytes(range(200, 256)) * 4))
    expect_error(r, 415, "not an image", "c8 c9 ca")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_truncated_image(tiny_client, fmt):
    data = png(size=(200, 150), fmt=fmt)
    expect_error(
        tiny_client.post("/api/classify", files=upload(data[: len(data) // 2])),
        400,
        "image",
        "truncated",
    )


@pytest.mark.parametrize(
    ("side", "words"),
    [
        (10_000, ("10000x10000 = 100000000 pixels", "--max-pixels")),  # over ours
        (100_000, ("10000000000 pixels", "--max-pixels", "bomb")),  # over Pillow's too
    ],
)
def test_decompression_bomb_refused_from_its_header(tiny_client, side, words):
    bomb = png_header_only(side, side)  # 1 kB sent, side**2 pixels claimed
    assert len(bomb) < 2000
    expect_error(tiny_client.post("/api/classify", files=upload(bomb)), 413, *words)


def test_pixel_limit_is_a_setting(registry, tiny_engine):
    with make_client(registry, tiny_engine, max_pixels=10_000) as c:
        expect_error(c.post("/api/classify", files=upload(png(size=(200, 100)))), 413, "20000")
        assert c.post("/api/classify", files=upload(png(size=(100, 100)))).status_code == 200


def test_too_many_bytes(registry, tiny_engine):
    limit = 4096
    big = png(size=(300, 300))  # noisy, so about 270 kB
    assert len(big) > 64 * 1024 + limit
    with make_client(registry, tiny_engine, max_upload_bytes=limit) as c:
        # over the limit and the multipart slack: refused from Content-Length, unread
        expect_error(c.post("/api/classify", files=upload(big)), 413, str(limit))
        # over the limit but within the slack: refused when the field is read
        r = c.post("/api/classify", files=upload(big[: limit + 100]))
        expect_error(r, 413, "image", str(limit))
        # without Content-Length (chunked): counted while it arrives
        body, ctype = _multipart(big)
        r = c.post("/api/classify", content=iter([body[:1000], body[1000:]]),
                   headers={"content-type": ctype})  # fmt: skip
        assert "content-length" not in {k.lower() for k in r.request.headers}
        expect_error(r, 413, str(limit))
        small = png(size=(20, 20))
        assert len(small) < limit
        assert c.post("/api/classify", files=upload(small)).status_code == 200


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "captionlabtestboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_bad_content_length(tiny_client):
    r = tiny_client.post("/api/classify", content=b"x", headers={"content-length": "lots"})
    assert r.status_code == 400


@pytest.mark.parametrize("path", [*IMAGE_ENDPOINTS, "/api/fool"])
def test_missing_image_field(tiny_client, path):
    r = tiny_client.post(path, data={"target": "goldfish"})
    expect_error(r, 422, "image: required field is missing")


def test_image_sent_as_text_not_file(tiny_client):
    r = tiny_client.post("/api/classify", data={"image": "hello"})
    expect_error(r, 422, "image")


def test_body_not_multipart(tiny_client):
    r = tiny_client.post("/api/classify", content=b'{"image": 1}',
                         headers={"content-type": "application/json"})  # fmt: skip
    expect_error(r, 422, "image")
    r = tiny_client.post("/api/classify", content=b"--broken",
                         headers={"content-type": "multipart/form-data; boundary=zz"})  # fmt: skip
    assert 400 <= r.status_code < 500 and "error" in r.json()


@pytest.mark.parametrize("path", ["/api/caption", "/api/explain"])
def test_unknown_model(tiny_client, runs_dir, path):
    r = tiny_client.post(path, files=upload(png()), data={"model": "gpt"})
    expect_error(r, 422, "unknown model 'gpt'", "attention, lstm, rnn")
    # a real checkpoint named by path is still only an unknown name: no path is ever opened
    for name in (str(runs_dir / "lstm" / "best.npz"), "../rnn", str(runs_dir / "attention")):
        r = tiny_client.post(path, files=upload(png()), data={"model": name})
        expect_error(r, 422, "unknown model")


def test_a_model_that_cannot_be_explained(registry, tiny_engine):
    """A captioner whose loss gives no feature gradient is named in a 422, and a server
    with no other model says so; captions still work."""
    import dataclasses

    from captionlab.serve.models import ModelRegistry

    old = dataclasses.replace(registry.get("lstm"), name="old", explainable=False)
    with make_client(ModelRegistry([old]), tiny_engine) as c:
        assert c.get("/api/models").json()["models"][0]["explain"] is False
        r = c.post("/api/explain", files=upload(png()), data={"model": "old"})
        expect_error(r, 422, "model 'old' (lstm) cannot be explained")
        expect_error(c.post("/api/explain", files=upload(png())), 422,
                     "no model that can be explained", "old (lstm)")  # fmt: skip
        assert c.post("/api/caption", files=upload(png())).status_code == 200


@pytest.mark.parametrize("method", ["gradcam", "guided-gradcam"])
@pytest.mark.parametrize("model", ["lstm", "rnn"])
def test_a_grid_method_for_a_pooled_model(tiny_client, model, method):
    """Grad-CAM needs the captioner's grid of cells: for a model of pooled features the
    method and the model are named in one line, as ``captionlab explain`` names them."""
    data = {"model": model, "method": method}
    r = tiny_client.post("/api/explain", files=upload(png()), data=data)
    expect_error(r, 422, f"method {method} needs a captioner over a grid of cells",
                 f"model '{model}' ({model}) reads one pooled feature vector",
                 "use vanilla, smoothgrad, ig")  # fmt: skip


def test_no_models_at_all(tiny_engine):
    from captionlab.serve.models import ModelRegistry

    with make_client(ModelRegistry([]), tiny_engine) as c:
        assert c.get("/api/models").json()["models"] == []
        r = c.post("/api/caption", files=upload(png()))
        expect_error(r, 422, "no captioning models", "--models")
        r = c.post("/api/explain", files=upload(png()))
        expect_error(r, 422, "no model that can be explained", "--models")
        assert c.post("/api/classify", files=upload(png())).status_code == 200


@pytest.mark.parametrize(
    ("path", "data", "words"),
    [
        ("/api/saliency", {"target": "catt"}, ("target", "unknown ImageNet class", "did you mean")),
        ("/api/saliency", {"target": "1000"}, ("target", "0..999")),
        ("/api/saliency", {"target": "crane"}, ("ambiguous", "134", "517")),
        (
            "/api/fool",
            {"target": "not a class at all"},
            (
                "target",
                "unknown ImageNet class",
            ),
        ),
        ("/api/fool", {}, ("target: required field is missing",)),
        ("/api/fool", {"target": "goldfish", "epsilon": "lots"}, ("epsilon", "2/255")),
        ("/api/fool", {"target": "goldfish", "epsilon": "3/2"}, ("epsilon", "(0, 1]")),
        ("/api/fool", {"target": "goldfish", "epsilon": "1/0"}, ("epsilon",)),
        ("/api/fool", {"target": "goldfish", "max_iter": 100000}, ("max_iter", "200")),
        ("/api/saliency", {"method": "gradcam"}, ("method", "vanilla")),
        ("/api/saliency", {"samples": 0}, ("samples",)),
        ("/api/saliency", {"steps": "many"}, ("steps", "integer")),
        ("/api/classify", {"top": 1001}, ("top", "20")),
        ("/api/caption", {"beam": 0}, ("beam",)),
        ("/api/caption", {"beam": 11}, ("beam", "10")),
        ("/api/explain", {"method": "occlusion"}, ("method", "'gradcam' or 'guided-gradcam'")),
        ("/api/explain", {"samples": 26}, ("samples", "25")),
        ("/api/explain", {"samples": 0}, ("samples", "1")),
        ("/api/explain", {"steps": 33}, ("steps", "32")),
        ("/api/explain", {"beam": 11}, ("beam", "10")),
        ("/api/explain", {"beam": "wide"}, ("beam", "integer")),
    ],
)
def test_bad_fields(tiny_client, path, data, words):
    expect_error(tiny_client.post(path, files=upload(png()), data=data), 422, *words)


def test_bad_dream_requests(tiny_client):
    expect_error(tiny_client.post("/api/dream", data={"target": "unicorn"}), 422, "unicorn")
    expect_error(tiny_client.post("/api/dream", data={}), 422, "target")
    r = tiny_client.post("/api/dream", data={"target": "1", "iterations": 10**6})
    expect_error(r, 422, "iterations")
    expect_error(tiny_client.get("/api/jobs/no-such-job"), 404, "unknown job")


def test_unknown_paths_methods_and_examples(tiny_client):
    expect_error(tiny_client.get("/api/nothing"), 404, "/api/nothing")
    expect_error(tiny_client.get("/api/classify"), 405, "GET", "/api/classify")
    expect_error(tiny_client.put("/api/health"), 405, "PUT")
    expect_error(tiny_client.get("/api/examples/lena.png"), 404, "lena", "chelsea")
    expect_error(tiny_client.get("/api/shapes", params={"seed": -1}), 422, "seed")


@pytest.mark.parametrize(
    "path",
    [
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/static/%2e%2e/%2e%2e/%2e%2e/errors.py",
        "/static//etc/passwd",
        "/docs-static/../core.py",
        "/api/examples/..%2f..%2fapp.png",
        "/api/jobs/..%2f..%2fetc%2fpasswd",
    ],
)
def test_no_path_escapes_the_package(tiny_client, path):
    r = tiny_client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert "def " not in r.text and "root:" not in r.text


def test_server_keeps_serving_after_bad_requests(tiny_client, runs_dir):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in runs_dir.rglob("*"))
    for bad in (b"", b"junk", png()[:50], png_header_only(9**6, 9**6)):
        assert 400 <= tiny_client.post("/api/classify", files=upload(bad)).status_code < 500
    r = tiny_client.post("/api/classify", files=upload(png()))
    assert r.status_code == 200 and len(r.json()["classes"]) == 5
    assert tiny_client.get("/api/health").json()["status"] == "ok"
    assert sorted((p.name, p.stat().st_mtime_ns) for p in runs_dir.rglob("*")) == before


def test_a_bug_is_a_json_500_and_the_server_goes_on(registry, tiny_engine, monkeypatch):
    with make_client(registry, tiny_engine) as c:
        monkeypatch.setattr(tiny_engine, "classify", lambda *a, **k: 1 / 0)
        expect_error(c.post("/api/classify", files=upload(png())), 500, "ZeroDivisionError")
        monkeypatch.undo()
        assert c.post("/api/classify", files=upload(png())).status_code == 200


def test_a_failing_job_reports_its_error(registry, tiny_engine, monkeypatch):
    import time

    with make_client(registry, tiny_engine) as c:
        monkeypatch.setattr(tiny_engine, "dream", lambda *a, **k: 1 / 0)
        job = c.post("/api/dream", data={"target": "goldfish"}).json()
        for _ in range(200):
            job = c.get(f"/api/jobs/{job['id']}").json()
            if job["state"] == "error":
                break
            time.sleep(0.02)
        assert job["state"] == "error" and "ZeroDivisionError" in job["error"]
