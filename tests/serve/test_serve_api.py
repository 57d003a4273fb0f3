"""Every endpoint of `captionlab serve`, answered through FastAPI's test client."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image
from serve_helpers import GRID_SIDE, IMAGE_SIZE, MODELS, WORDS, photo_png, png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def upload(data: bytes, name: str = "photo.png", kind: str = "image/png") -> dict:
    return {"image": (name, data, kind)}


def decode_data_url(url: str) -> np.ndarray:
    head, b64 = url.split(",", 1)
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_health_lists_models_and_the_checkpoint_that_did_not_load(client):
    r = client.get("/api/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["device"] == "cpu"
    assert body["models"] == MODELS
    assert len(body["skipped"]) == 1 and body["skipped"][0].startswith("broken: ")
    assert body["queue"]["max"] == 256 and body["queue"]["pending"] == 0
    assert body["max_upload_bytes"] == 20 * 1024 * 1024


def test_models_are_described_by_name_without_paths(client, runs_dir):
    body = client.get("/api/models").json()
    assert body["beam_max"] == 10
    assert [m["name"] for m in body["models"]] == MODELS
    attention, lstm = body["models"][:2]
    assert lstm == {
        "name": "lstm",
        "cell": "lstm",
        "vocab_size": 4 + len(WORDS),
        "hidden_dim": 16,
        "image_size": IMAGE_SIZE,
        "attention": False,
        "grid": None,
        "explain": True,
        "explain_methods": ["vanilla", "smoothgrad", "ig", "layercam"],  # pooled features
        "hold_attention": False,
    }
    assert attention == {**lstm, "name": "attention", "cell": "attention", "attention": True,
                         "grid": [GRID_SIDE, GRID_SIDE],  # a grid of cells: the grid methods too
                         "explain_methods": [*lstm["explain_methods"], "gradcam",
                                             "guided-gradcam"],
                         "hold_attention": True}  # fmt: skip
    assert str(runs_dir) not in client.get("/api/models").text


def test_classify_chelsea_is_an_egyptian_cat(client):
    r = client.post("/api/classify", files=upload(photo_png("chelsea")))
    assert r.status_code == 200, r.text
    classes = r.json()["classes"]
    assert len(classes) == 5
    assert classes[0]["index"] == 285 and classes[0]["name"] == "Egyptian cat"
    assert 0.3 < classes[0]["probability"] < 0.5  # 0.398 measured
    probs = [c["probability"] for c in classes]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6


def test_classify_top_k_and_jpeg_input(client):
    jpeg = png(np.asarray(Image.open(io.BytesIO(photo_png("coffee")))), fmt="JPEG")
    r = client.post(
        "/api/classify", files=upload(jpeg, "coffee.jpg", "image/jpeg"), data={"top": 3}
    )
    assert r.status_code == 200
    classes = r.json()["classes"]
    assert len(classes) == 3 and classes[0]["name"] == "espresso"


def test_caption_every_model_greedy_and_beam(client, registry):
    r = client.post("/api/caption", files=upload(photo_png("astronaut")), data={"beam": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["model"] for x in results] == MODELS
    vocab = set(WORDS) | {"<UNK>"}
    for x in results:
        assert x["image_size"] == IMAGE_SIZE
        greedy, beam = x["captions"]
        assert (greedy["decoding"], greedy["beam_size"]) == ("greedy", 1)
        assert (beam["decoding"], beam["beam_size"]) == ("beam", 2)
        for c in (greedy, beam):
            assert c["words"] == c["text"].split() and set(c["words"]) <= vocab
            if x["model"] == "attention":
                assert len(c["attention"]["maps"]) == len(c["words"])
            else:
                assert c["attention"] is None  # no attention in an RNN
    # the same caption the library gives for the same centre crop
    from captionlab.serve.imaging import decode_upload, square

    pixels = square(decode_upload(photo_png("astronaut"), 10**8), IMAGE_SIZE)
    direct = registry.caption("lstm", pixels, beam=2)
    assert [c.text for c in direct] == [c["text"] for c in results[1]["captions"]]


def test_caption_attention_is_the_models_own_per_word(client, runs_dir):
    """Each word's cell weights are those of the step that chose it, as decoding the
    checkpoint directly gives them, and its picture is the crop seen through them."""
    from captionlab.captioning import load_checkpoint
    from captionlab.captioning.plots import attention_map, attention_spotlight
    from captionlab.runs.inference import best_captions, extractor_for_checkpoint
    from captionlab.serve.imaging import decode_upload, square

    image = png(size=(160, 120))
    r = client.post("/api/caption", files=upload(image), data={"model": "attention", "beam": 3})
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    pixels = square(decode_upload(image, 10**8), IMAGE_SIZE)
    model, state = load_checkpoint(runs_dir / "attention" / "best.npz")
    grid = extractor_for_checkpoint(state).transform_images_with_grid(pixels[None])[1]
    for c, beam in zip(result["captions"], (1, 3), strict=True):
        ids, alphas = best_captions(model, grid, beam=beam, max_length=20, attention=True)
        words = [model.idx_to_word[int(i)] for i in ids[0]]
        K = words.index("<END>") if "<END>" in words else len(words)
        assert c["words"] == words[:K] and K >= 3  # the tiny model writes sentences
        att = c["attention"]
        assert att["grid"] == [GRID_SIDE, GRID_SIDE]
        maps = np.array(att["maps"])  # (K, L)
        assert maps.shape == (K, GRID_SIDE**2)
        np.testing.assert_allclose(maps, alphas[0, :K], atol=1e-5)
        np.testing.assert_allclose(maps.sum(axis=1), 1.0, atol=1e-4)
        assert len(att["images"]) == K
        for k in (0, K - 1):
            shown = decode_data_url(att["images"][k]).astype(int)
            want = attention_spotlight(pixels, attention_map(alphas[0, k], IMAGE_SIZE))
            assert np.abs(shown - np.round(want * 255)).max() <= 1


def test_explain_attention_model_word_by_word(client, runs_dir):
    """Per word: its saliency map, its peak and its attention; the same caption, peaks and
    probabilities as the library's Explainer built from the checkpoint."""
    from captionlab.explain import Explainer
    from captionlab.serve.imaging import decode_upload, square

    image = png(size=(150, 100))
    r = client.post("/api/explain", files=upload(image), data={"method": "vanilla"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["method"], body["beam"]) == ("attention", "vanilla", 1)
    assert body["samples"] is None and body["steps"] is None
    assert body["image_size"] == IMAGE_SIZE and body["grid"] == [GRID_SIDE, GRID_SIDE]
    pixels = square(decode_upload(image, 10**8), IMAGE_SIZE)
    assert np.array_equal(decode_data_url(body["image"]), pixels)
    words = body["words"]
    assert [w["word"] for w in words] == body["caption"].split() and len(words) >= 3
    direct = Explainer.from_checkpoint(runs_dir / "attention").explain(pixels, "vanilla")
    assert direct.caption == body["caption"]
    for w, d in zip(words, direct.words, strict=True):
        assert w["position"] == d.position and w["peak"] == list(d.peak)
        assert w["prob"] == pytest.approx(d.prob, rel=1e-4)
        assert w["attention_peak"] == list(d.attention_peak)  # its top cell's centre, as the CLI's
        for key in ("saliency", "attention"):
            assert decode_data_url(w[key]).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_explain_rnn_by_smoothgrad_and_ig(client):
    image = png(size=(90, 90))
    data = {"model": "rnn", "method": "smoothgrad", "samples": 3, "beam": 2}
    first = client.post("/api/explain", files=upload(image), data=data)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["samples"] == 3 and body["steps"] is None and body["beam"] == 2
    assert body["grid"] is None
    for w in body["words"]:
        assert w["attention"] is None and w["attention_peak"] is None
        assert all(0 <= v < IMAGE_SIZE for v in w["peak"]) and 0 < w["prob"] <= 1
    # seeded noise: the same request gives the same maps
    again = client.post("/api/explain", files=upload(image), data=data).json()
    assert [w["saliency"] for w in again["words"]] == [w["saliency"] for w in body["words"]]
    r = client.post("/api/explain", files=upload(image),
                    data={"model": "rnn", "method": "ig", "steps": 2})  # fmt: skip
    assert r.status_code == 200 and r.json()["steps"] == 2


def test_explain_with_the_attention_held_equals_the_held_explainer(client, runs_dir):
    """hold_attention=true: the attention model's maps are the held Explainer's (peaks and
    overlays), not the free one's; a model without attention to hold is a 422 naming it."""
    from captionlab.explain import Explainer
    from captionlab.serve.imaging import decode_upload, square
    from captionlab.vision.figures import overlay

    image = png(size=(120, 100))
    data = {"model": "attention", "method": "vanilla", "hold_attention": "true"}
    r = client.post("/api/explain", files=upload(image), data=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["hold_attention"] is True
    pixels = square(decode_upload(image, 10**8), IMAGE_SIZE)
    held = Explainer.from_checkpoint(runs_dir / "attention", hold_attention=True)
    direct = held.explain(pixels, "vanilla")
    free = Explainer.from_checkpoint(runs_dir / "attention").explain(pixels, "vanilla")
    assert body["caption"] == direct.caption
    for w, d in zip(body["words"], direct.words, strict=True):
        assert w["peak"] == (None if d.peak is None else list(d.peak))
        shown = decode_data_url(w["saliency"]).astype(int)
        assert np.abs(shown - np.round(overlay(pixels, d.saliency) * 255)).max() <= 1
    assert not all(np.allclose(d.saliency, f.saliency, rtol=1e-3)
                   for d, f in zip(direct.words, free.words, strict=True))  # fmt: skip
    free_body = client.post("/api/explain", files=upload(image),
                            data={**data, "hold_attention": "false"}).json()  # fmt: skip
    assert free_body["hold_attention"] is False
    r = client.post(
        "/api/explain",
        files=upload(image),
        data={"model": "lstm", "method": "vanilla", "hold_attention": "true"},
    )
    assert r.status_code == 422
    assert "hold_attention needs a captioner with attention" in r.text and "'lstm'" in r.text


@pytest.mark.parametrize("method", ["gradcam", "guided-gradcam"])
def test_explain_grid_methods_equal_the_explainer(client, runs_dir, method):
    """A grid method on the attention model: a map per word, each the overlay of what the
    library's Explainer computes for the same image and caption (same peaks, probabilities)."""
    from captionlab.explain import Explainer
    from captionlab.serve.imaging import decode_upload, square
    from captionlab.vision.figures import overlay

    image = png(size=(120, 100))
    data = {"model": "attention", "method": method, "samples": 2}
    r = client.post("/api/explain", files=upload(image), data=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["method"]) == ("attention", method)
    assert body["samples"] == (2 if method == "guided-gradcam" else None)
    pixels = square(decode_upload(image, 10**8), IMAGE_SIZE)
    direct = Explainer.from_checkpoint(runs_dir / "attention").explain(
        pixels, method, samples=2, seed=0
    )
    assert body["caption"] == direct.caption and len(body["words"]) == len(direct.words) >= 3
    for w, d in zip(body["words"], direct.words, strict=True):
        peak = None if d.peak is None else list(d.peak)  # None: no cell raises the word
        assert (w["word"], w["position"], w["peak"]) == (d.word, d.position, peak)
        assert w["prob"] == pytest.approx(d.prob, rel=1e-4)
        shown = decode_data_url(w["saliency"]).astype(int)
        assert np.abs(shown - np.round(overlay(pixels, d.saliency) * 255)).max() <= 1
        assert w["attention"] is not None  # the attention row stays beside the map
    if method == "gradcam":  # the peak is the centre of a cell
        centres = {int((i + 0.5) * IMAGE_SIZE / GRID_SIDE) for i in range(GRID_SIDE)}
        assert all(set(w["peak"]) <= centres for w in body["words"] if w["peak"] is not None)
        assert any(w["peak"] is not None for w in body["words"])


def test_caption_one_model_greedy_only(client):
    r = client.post("/api/caption", files=upload(png()), data={"model": "rnn", "beam": 1})
    assert r.status_code == 200
    (result,) = r.json()["results"]
    assert result["model"] == "rnn" and len(result["captions"]) == 1


@pytest.mark.parametrize("method", ["vanilla", "smoothgrad", "ig"])
def test_saliency_methods_return_overlay_and_map(client, method):
    data = {"method": method, "samples": 2, "steps": 2}
    r = client.post("/api/saliency", files=upload(photo_png("chelsea")), data=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == method and body["target"]["index"] == 285
    overlay, heat = decode_data_url(body["overlay"]), decode_data_url(body["map"])
    assert overlay.shape == heat.shape == (224, 224, 3)
    assert heat.max() == 255 and heat.min() == 0  # normalised for display


def test_saliency_for_a_chosen_class(client):
    r = client.post(
        "/api/saliency", files=upload(photo_png("chelsea")), data={"target": "tiger cat"}
    )
    assert r.status_code == 200
    assert r.json()["target"]["index"] == 282


def test_fool_turns_the_cat_into_a_goldfish_within_the_budget(client):
    r = client.post(
        "/api/fool",
        files=upload(photo_png("chelsea")),
        data={"target": "goldfish", "epsilon": "4/255", "max_iter": 40},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["attack"] == "pgd" and body["epsilon"] == pytest.approx(4 / 255)
    assert body["original_class"]["name"] == "Egyptian cat"
    assert body["success"] and body["fooled_class"]["index"] == 1 == body["target"]["index"]
    original = decode_data_url(body["images"]["original"]).astype(int)
    fooled = decode_data_url(body["images"]["fooled"]).astype(int)
    assert np.abs(fooled - original).max() == body["max_change"] <= 4
    assert decode_data_url(body["images"]["difference"]).shape == (224, 224, 3)


def test_fool_unbounded(client):
    r = client.post(
        "/api/fool",
        files=upload(photo_png("coffee")),
        data={"target": "1", "epsilon": "none", "max_iter": 30},
    )
    assert r.status_code == 200, r.text
    assert r.json()["attack"] == "cs231n" and r.json()["epsilon"] is None


def test_dream_job_reports_progress_then_its_picture(client):
    r = client.post("/api/dream", data={"target": "tarantula", "iterations": 20})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] in ("queued", "running") and job["total"] == 20
    seen_steps = []
    deadline = time.monotonic() + 120
    while job["state"] not in ("done", "error") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
        seen_steps.append(job["step"])
    assert job["state"] == "done", job["error"]
    assert any(0 < s < 20 for s in seen_steps)  # progress was visible on the way
    assert job["result"]["target"]["index"] == 76 and job["result"]["iterations"] == 20
    assert decode_data_url(job["result"]["image"]).shape == (224, 224, 3)
    assert decode_data_url(job["preview"]).shape == (224, 224, 3)


def test_examples_photos_and_shapes(client):
    body = client.get("/api/examples").json()
    names = [p["name"] for p in body["photos"]]
    assert names == ["chelsea", "astronaut", "coffee", "rocket"]
    r = client.get(body["photos"][0]["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (451, 300)
    a = client.get(body["shapes_url"], params={"seed": 7}).json()
    b = client.get(body["shapes_url"], params={"seed": 7}).json()
    assert a == b and a["seed"] == 7 and len(a["references"]) == 5
    assert decode_data_url(a["image"]).shape == (224, 224, 3)
    assert 1 <= len(a["objects"]) <= 3
    assert client.get(body["shapes_url"]).json()["seed"] >= 0  # a random scene


def test_classes_catalogue(client):
    classes = client.get("/api/classes").json()["classes"]
    assert len(classes) == 1000 and classes[285]["name"] == "Egyptian cat"
    assert classes[281] == {"index": 281, "name": "tabby", "synonyms": ["tabby cat"]}


def test_page_is_served_offline_with_a_strict_policy(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    policy = r.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    page = r.text
    for asset in ("/static/app.js", "/static/style.css", "/static/favicon.svg"):
        assert asset in page
        assert client.get(asset).status_code == 200
    for text in (page, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "http://" not in text and "https://" not in text  # nothing from elsewhere


def test_the_page_offers_every_explain_method_by_model(client):
    """The explain panel's method selector holds every method the API takes, in the API's
    order, each with a name in the script; the script offers a model only the methods its
    listing gives (``explain_methods``: the grid methods for a grid model only)."""
    import re

    from captionlab.serve.models import EXPLAIN_METHODS

    page = client.get("/").text
    select = re.search(r'<select id="explain-method"[^>]*>(.*?)</select>', page, re.S)
    assert re.findall(r'<option value="([^"]+)"', select.group(1)) == list(EXPLAIN_METHODS)
    assert list(EXPLAIN_METHODS)[-2:] == ["gradcam", "guided-gradcam"]
    script = client.get("/static/app.js").text
    names = re.search(r"const METHOD_NAMES = \{(.*?)\};", script, re.S).group(1)
    for method in EXPLAIN_METHODS:
        assert re.search(rf'(^|[\s,{{]){method}:|"{method}":', names), method
    assert "model.explain_methods" in script
    spec = client.get("/openapi.json").json()
    ref = spec["paths"]["/api/explain"]["post"]["requestBody"]["content"]["multipart/form-data"]
    form = spec["components"]["schemas"][ref["schema"]["$ref"].rsplit("/", 1)[1]]
    assert form["properties"]["method"]["enum"] == list(EXPLAIN_METHODS)


def test_openapi_documents_the_api_and_docs_page_is_local(client):
    spec = client.get("/openapi.json").json()
    for path in ("/api/health", "/api/models", "/api/caption", "/api/explain", "/api/classify",
                 "/api/saliency", "/api/fool", "/api/dream", "/api/jobs/{job_id}"):  # fmt: skip
        assert path in spec["paths"], path
    body = spec["paths"]["/api/classify"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "/docs-static/swagger-ui-bundle.js" in docs.text and "cdn." not in docs.text
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200
