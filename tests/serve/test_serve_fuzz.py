"""A schema-driven property-based fuzz: requests built from the app's own OpenAPI document,
with valid, invalid and hostile values in every field, never get a 5xx.

For each operation the OpenAPI document lists, hypothesis draws path and query parameters
and multipart fields from the documented schema (in range and out of it, the enum values
and other text, missing fields, extra fields) and images of every sort (good PNG and JPEG
of any size and mode, truncated files, random bytes, a decompression bomb's header, text
where a file belongs). Every answer must be below 500; every error must be ``{"error"}``.
The vision endpoints run on a tiny stand-in CNN so the fuzz can afford real model work.
"""

from __future__ import annotations

import io
import string
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_serve_errors import png_header_only

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["lstm", "rnn", "attention", "goldfish", "Egyptian cat", "crane", "285", "0", "999",
         "1000", "-1", "2/255", "none", "0.5", "1/0", "nan", "vanilla", "ig", "smoothgrad",
         "chelsea",
         "../../etc/passwd", "/etc/passwd", "%2e%2e%2f", "C:\\Windows", "\x00", "", " ",
         "ñandú 🐈", "a" * 5000]  # fmt: skip


def _image_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["png", "jpeg", "gif", "truncated", "random", "bomb", "text"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    if kind == "bomb":
        return png_header_only(draw(st.integers(9000, 60000)), draw(st.integers(9000, 60000)))
    if kind == "text":
        return draw(st.text(max_size=200)).encode()
    w, h = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1", "I;16", "CMYK", "LA"]))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if mode == "I;16":  # 16-bit grey
        img = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    else:
        img = Image.fromarray(pixels).convert(mode)
    fmt = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF", "truncated": "PNG"}[kind]
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    if fmt == "GIF" and img.mode not in ("P", "L", "1"):
        img = img.convert("P")
    if fmt == "PNG" and img.mode == "CMYK":
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    return data


PLAUSIBLE = {
    "target": ["goldfish", "285", "tabby cat", "n01443537", "volcano"],
    "epsilon": ["2/255", "none", "8/255", "0.01"],
    "model": ["lstm", "rnn", "attention"],
}
# SmoothGrad samples and IG points cost a CNN pass each (per word, for explain): in range,
# they are drawn small; out of range as any other integer
COSTLY = {"samples": [1, 2, 3], "steps": [1, 2, 3]}


def _value(draw, schema: dict, name: str = ""):
    """A value for a documented field: mostly plausible, sometimes anything."""
    options = schema.get("anyOf", [schema])
    kinds = {o.get("type") for o in options}
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.text(alphabet=string.printable, max_size=30))
    if choice == 1:
        return draw(st.sampled_from(NAMES))
    if name in PLAUSIBLE:
        return draw(st.sampled_from(PLAUSIBLE[name]))
    if name in COSTLY and choice < 7:
        return draw(st.sampled_from(COSTLY[name]))
    if "enum" in schema:
        return draw(st.sampled_from(schema["enum"]))
    if "integer" in kinds:
        spec = next(o for o in options if o.get("type") == "integer")
        lo, hi = int(spec.get("minimum", -(10**6))), int(spec.get("maximum", 10**6))
        if choice < 7:
            return draw(st.integers(lo, min(hi, lo + 20)))
        return draw(st.sampled_from([lo - 1, hi + 1, -(2**63), 2**64, 0]))
    return draw(st.sampled_from(NAMES))


# Every operation of the API (test_openapi_lists_every_endpoint keeps this list honest).
OPERATIONS = [
    ("get", "/api/health"),
    ("get", "/api/models"),
    ("get", "/api/classes"),
    ("get", "/api/examples"),
    ("get", "/api/examples/{name}.png"),
    ("get", "/api/shapes"),
    ("post", "/api/caption"),
    ("post", "/api/explain"),
    ("post", "/api/classify"),
    ("post", "/api/saliency"),
    ("post", "/api/fool"),
    ("post", "/api/dream"),
    ("get", "/api/jobs/{job_id}"),
]


@st.composite
def requests(draw, spec: dict, method: str, path: str):
    op = spec["paths"][path][method]
    url = path
    params = {}
    for p in op.get("parameters", []):
        if p["in"] == "path":
            raw = draw(st.one_of(st.sampled_from(NAMES), st.text(max_size=40)))
            url = url.replace("{" + p["name"] + "}", quote(raw, safe="") or "x")
        elif draw(st.booleans()):
            params[p["name"]] = _value(draw, p["schema"])
    data, files = {}, {}
    body = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if body:
        ref = body["schema"]["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][ref]
        for name, field in schema["properties"].items():
            required = name in schema.get("required", [])
            leave_out = draw(st.integers(0, 9)) == 0 if required else draw(st.booleans())
            if leave_out:
                continue
            if field.get("contentMediaType"):
                if draw(st.integers(0, 9)):
                    files[name] = ("upload.bin", _image_bytes(draw), "application/octet-stream")
                else:
                    data[name] = "not a file"
            else:
                data[name] = str(_value(draw, field, name))
        if draw(st.integers(0, 4)) == 0:
            data["unexpected"] = "field"
    return method.upper(), url, params, data, files


@pytest.fixture(scope="module")
def spec(tiny_client):
    return tiny_client.get("/openapi.json").json()


def test_openapi_lists_every_endpoint(spec):
    documented = sorted((m, p) for p, item in spec["paths"].items() for m in item)
    assert documented == sorted(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_no_request_gets_a_server_error(tiny_client, spec, method, path, data):
    method, url, params, form, files = data.draw(requests(spec, method, path))
    r = tiny_client.request(method, url, params=params, data=form or None, files=files or None)
    assert r.status_code < 500, (method, url, params, form, r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/json"), r.text[:200]
        body = r.json()
        assert set(body) == {"error"} and body["error"], body
