"""A real `captionlab serve` process on a free port: the command line, real HTTP, and the
page driven in headless Chromium (Debian's package, driven by Playwright; nothing downloads
a browser).

The browser test skips, with the reason, only when Chromium or Playwright is missing and
CAPTIONLAB_REQUIRE_BROWSER is not set; CI (.ci/run) sets it, so there it fails instead.
Screenshots go to the test's tmp folder, and also to CAPTIONLAB_SCREENSHOT_DIR when set.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serve_helpers import MODELS, photo_png, png

CHROMIUM = os.environ.get("CAPTIONLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def start_server(*args: str, timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """Start ``captionlab serve ARGS --port 0``; return the process and the URL it printed."""
    cmd = [sys.executable, "-m", "captionlab.cli", "serve", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if "open http://" in line:
            url = line.split("open ", 1)[1].split()[0]
            return proc, url
    proc.kill()
    raise AssertionError("captionlab serve printed no URL:\n" + "".join(seen))


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def post_image(url: str, data: bytes, fields: dict | None = None) -> tuple[int, dict]:
    boundary = "captionlablive"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in (fields or {}).items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(runs_dir):
    proc, url = start_server("--models", str(runs_dir))
    yield url
    proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
    assert proc.wait(timeout=60) == 0


def test_serve_binds_localhost_and_answers(server):
    assert server.startswith("http://127.0.0.1:") and server.endswith("/")
    health = get_json(server + "api/health")
    assert health["status"] == "ok" and health["models"] == MODELS
    with urllib.request.urlopen(server, timeout=30) as r:
        assert r.status == 200 and b"captionlab" in r.read()
    status, body = post_image(server + "api/classify", photo_png("chelsea"))
    assert status == 200 and body["classes"][0]["name"] == "Egyptian cat"
    status, body = post_image(server + "api/classify", b"GIF89a junk")
    assert status == 415 and "not an image" in body["error"]


def test_concurrent_clients_over_http_are_all_answered(server):
    image = png(size=(160, 120))

    def one(i):
        kind = "classify" if i % 2 else "caption"
        return post_image(server + f"api/{kind}", image)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    assert [status for status, _ in results] == [200] * 32


def test_a_busy_port_is_a_one_line_error(server, runs_dir):
    port = server.rsplit(":", 1)[1].strip("/")
    cmd = [sys.executable, "-m", "captionlab.cli", "serve", "--port", port]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_models_folder_is_a_one_line_error(tmp_path):
    cmd = [sys.executable, "-m", "captionlab.cli", "serve", "--port", "0",
           "--models", str(tmp_path / "nowhere")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no such folder of trained runs" in done.stderr


# ----------------------------------------------------------------------------- the browser


def _browser_or_skip():
    missing = []
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        missing.append(f"Chromium ({CHROMIUM}; apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    if missing:
        reason = "headless browser test needs " + " and ".join(missing)
        if os.environ.get("CAPTIONLAB_REQUIRE_BROWSER"):
            pytest.fail(reason + "; CAPTIONLAB_REQUIRE_BROWSER is set, so this must run")
        pytest.skip(reason)


def _save(path: Path, name: str) -> None:
    extra = os.environ.get("CAPTIONLAB_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)


DISPATCH_IMAGE = """
([b64, kind]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
  if (kind === 'drop') {
    document.querySelector('#drop').dispatchEvent(
      new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
  } else {
    document.dispatchEvent(
      new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
  }
}
"""

WIDER_THAN_SCREEN = """
Array.from(document.querySelectorAll('body *'))
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5
               && !e.closest('.thumbs') && getComputedStyle(e).position !== 'fixed')
  .slice(0, 5)
  .map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className
            + ' right=' + Math.round(e.getBoundingClientRect().right))
"""


def test_page_in_headless_chromium(request, tmp_path):
    """Upload a photo, see captions (with the attention model's strip of per-word maps),
    each word explained, class bars, saliency, a fooling image chosen with completion and a
    class visualization; nothing but the server is ever asked for."""
    _browser_or_skip()
    server = request.getfixturevalue("server")
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "chelsea.png"
    photo.write_bytes(photo_png("chelsea"))
    problems, foreign = [], []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on(
            "request",
            lambda r: r.url.startswith(("http", "ws")) and not r.url.startswith(server)
            and foreign.append(r.url),
        )  # fmt: skip
        page.goto(server)
        page.wait_for_selector("#status.ok")
        assert "3 models" in page.inner_text("#status")
        assert page.input_value("#explain-model") == "attention"  # the model with attention

        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#classes li.bar:nth-child(5)")
        page.wait_for_selector("#captions .model:nth-child(3) .caption")
        bars = page.locator("#classes li.bar")
        assert bars.count() == 5
        assert "Egyptian cat" in bars.nth(0).inner_text()
        assert page.locator("#captions .caption").count() == 6  # 3 models x (greedy, beam 3)
        # the attention model's captions: a strip of maps, one per word, under its caption
        attention = page.locator("#captions .model").nth(0)
        assert attention.locator(".chip").inner_text().lower() == "attention"
        strips = attention.locator(".strip")
        assert 1 <= strips.count() <= 2  # one per different caption
        # the strip's caption is the line just above it
        last = strips.nth(0).locator("xpath=preceding-sibling::div[contains(@class, 'caption')][1]")
        words = strips.nth(0).locator("li")
        assert words.count() >= 3 and words.count() == last.locator(".word").count()
        assert words.nth(1).inner_text() == last.locator(".word").nth(1).inner_text()
        assert words.nth(0).locator("img").evaluate("i => i.complete && i.naturalWidth") == 64
        assert page.locator("#captions .model").nth(1).locator(".strip").count() == 0  # lstm
        words.nth(1).hover()  # pointing at a picture lights up its word
        assert "hot" in (last.locator(".word").nth(1).get_attribute("class") or "")
        # each word explained: its saliency map with the peak marked, and its attention
        page.wait_for_selector("#explain .explain-word .att img")
        explained = page.locator("#explain .explain-word:not(.legend)")
        caption = page.inner_text("#explain .explain-caption").strip("“”")
        assert explained.count() == len(caption.split()) >= 3
        assert explained.locator(".peak").count() == explained.count()
        assert explained.locator(".att img").count() == explained.count()
        page.wait_for_selector("#saliency figure[data-method=vanilla] img")

        page.fill("#fool-target", "goldf")
        page.wait_for_selector("#fool-target-list li")
        assert "goldfish" in page.inner_text("#fool-target-list li >> nth=0")
        page.click("#fool-target-list li >> nth=0")
        assert page.input_value("#fool-target") == "goldfish"
        page.click("#fool-go")
        page.wait_for_selector("#fool-verdict .big")
        assert page.inner_text("#fool-verdict .big") == "goldfish"

        page.fill("#dream-target", "flamingo")
        page.select_option("#dream-steps", "25")
        page.click("#dream-go")
        page.wait_for_selector("#dream-meta b")
        assert page.inner_text("#dream-meta b") == "flamingo"
        for method in ("smoothgrad", "ig"):
            page.wait_for_selector(f"#saliency figure[data-method={method}] img")
        page.wait_for_timeout(700)  # let the bars finish their animation
        page.evaluate("window.scrollTo(0, 0)")
        shot = tmp_path / "serve_page.png"
        page.screenshot(path=str(shot), full_page=True)
        _save(shot, "serve_page.png")
        for card in ("captions", "explain"):
            part = tmp_path / f"serve_{card}.png"
            page.locator(f"#{card}-card").screenshot(path=str(part))
            _save(part, part.name)

        # a model over a grid of cells is offered the grid methods: Grad-CAM at its input grid
        shown = "os => os.filter(o => !o.hidden && !o.disabled).map(o => o.value)"
        grid_methods = ["vanilla", "smoothgrad", "ig", "layercam", "gradcam", "guided-gradcam"]
        assert page.eval_on_selector_all("#explain-method option", shown) == grid_methods
        page.select_option("#explain-method", "gradcam")
        page.wait_for_selector("#explain .explain-head .meta:has-text('Grad-CAM')")
        assert explained.count() == len(caption.split())  # the same caption, a map per word
        assert explained.locator(".att img").count() == len(caption.split())
        flat = page.locator("#explain .explain-word.flat")  # words no cell raises: no dot
        assert explained.locator(".peak").count() + flat.count() == len(caption.split())
        assert explained.locator(".peak").count() >= 1
        assert "grid cell" in page.inner_text("#explain > div > p.meta")
        gradcam = tmp_path / "serve_explain_gradcam.png"
        page.locator("#explain-card").screenshot(path=str(gradcam))
        _save(gradcam, gradcam.name)
        # the attention captioner's attention can be held: ticking the box explains again
        assert page.is_visible("#explain-hold") and not page.is_checked("#explain-hold")
        page.check("#explain-hold")
        page.wait_for_selector("#explain .explain-head .meta:has-text('attention held')")
        assert explained.count() == len(caption.split())
        held = tmp_path / "serve_explain_held.png"
        page.locator("#explain-card").screenshot(path=str(held))
        _save(held, held.name)
        # the RNN reads one pooled vector: no grid methods, and the method falls back
        page.select_option("#explain-model", "rnn")
        assert not page.is_visible("#explain-hold")  # no attention to hold
        assert page.input_value("#explain-method") == "smoothgrad"
        assert page.eval_on_selector_all("#explain-method option", shown) == grid_methods[:4]
        page.wait_for_selector("#explain img[alt*='crop rnn saw']")
        # LayerCAM at the backbone's block explains the pooled RNN too
        page.select_option("#explain-method", "layercam")
        page.wait_for_selector("#explain .explain-head .meta:has-text('LayerCAM')")
        assert page.locator("#explain .explain-word").count() >= 1
        assert "block-10" in page.inner_text("#explain > div > p.meta")
        layercam = tmp_path / "serve_explain_layercam.png"
        page.locator("#explain-card").screenshot(path=str(layercam))
        _save(layercam, layercam.name)

        # another model and method: the RNN has no attention row
        page.select_option("#explain-method", "vanilla")
        page.select_option("#explain-model", "rnn")
        page.wait_for_selector("#explain .meta:has-text('vanilla gradient')")
        assert page.locator("#explain .explain-word .peak").count() >= 1
        assert page.locator("#explain .explain-word .att").count() == 0

        # an image dropped on the page, then one pasted, replace the photo and are analysed
        b64 = base64.b64encode(png(size=(200, 140))).decode()
        for event, name in (("drop", "dropped.png"), ("paste", "pasted image")):
            page.evaluate(DISPATCH_IMAGE, [b64, event])
            page.wait_for_selector(f"#image-meta:has-text('{name}')")
            page.wait_for_selector("#classes li.bar:nth-child(5)")

        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        page.wait_for_timeout(300)
        phone = tmp_path / "serve_phone.png"
        page.screenshot(path=str(phone), full_page=True)
        _save(phone, "serve_phone.png")
        too_wide = page.evaluate(WIDER_THAN_SCREEN)
        assert not too_wide, f"wider than a phone screen: {too_wide}"

        page.goto(server + "docs")  # the API's OpenAPI page renders, from local files only
        page.wait_for_selector(".opblock")
        assert page.locator(".opblock").count() == 13
        context.close()
    assert shot.stat().st_size > 50_000 and phone.stat().st_size > 20_000
    assert not problems, problems
    assert not foreign, f"the page asked another host: {foreign}"
