"""The web page at /, driven in Debian's Chromium as a person uses it: a real server, real clicks.

Screenshots land in test-artifacts/browser/.
"""

from __future__ import annotations

import functools
import gzip
import io
import re

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from training.data import TEST_IMAGES, TEST_LABELS, verified_file

pytestmark = pytest.mark.browser

MODEL = "mnist-convnet"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def mnist_test_split() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(verified_file("mnist", TEST_IMAGES)) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(verified_file("mnist", TEST_LABELS)) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def held_out_digits() -> list[tuple[str, bytes]]:
    """The first digit of each class from the held-out images 8000-9999, as PNG files a person might have:
    even classes as MNIST stores them (white on black, 28x28), odd ones as a scan (black on white, 112x112)."""
    images, labels = mnist_test_split()
    digits = []
    for digit in range(10):
        index = 8000 + int(np.flatnonzero(labels[8000:] == digit)[0])
        picture = Image.fromarray(images[index], mode="L")
        if digit % 2:
            picture = Image.fromarray(255 - images[index], mode="L").resize((112, 112), Image.Resampling.BILINEAR)
        digits.append((str(digit), png_bytes(picture)))
    return digits


def file_payload(name: str, data: bytes, mime: str = "image/png") -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Trace strokes on the canvas with the mouse; points are fractions of the canvas width and height."""
    box = page.locator("#canvas").bounding_box()
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=12)
        page.mouse.up()


ONE = [[(0.53, 0.15), (0.47, 0.85)]]
SEVEN = [[(0.27, 0.2), (0.73, 0.2), (0.45, 0.85)]]


def wait_for_result(page) -> str:
    page.locator("#result").wait_for(state="visible")
    page.wait_for_function("document.getElementById('result-panel').getAttribute('aria-busy') === null")
    return page.locator("#prediction-label").inner_text()


def bar_percentages(page) -> list[float]:
    return [float(t.rstrip("%")) for t in page.locator("#probabilities .bar-value").all_inner_texts()]


def assert_result_complete(page) -> None:
    """What every result shows: both pictures, sorted bars with percentages, the model and the time taken."""
    assert page.locator("#picture").evaluate("img => img.complete && img.naturalWidth > 0")
    assert page.locator("#model-input").evaluate("img => [img.naturalWidth, img.naturalHeight]") == [28, 28]
    percentages = bar_percentages(page)
    assert len(percentages) == 10
    assert percentages == sorted(percentages, reverse=True)
    assert 99.0 <= sum(percentages) <= 101.0
    assert page.locator("#probabilities .bar-label").first.inner_text() == page.locator("#prediction-label").inner_text()
    assert re.fullmatch(rf"{MODEL} v\d+", page.locator("#result-model").inner_text())
    assert re.match(r"\d+\.\d ms", page.locator("#result-time").inner_text())


# For each element matched: its text colour against the first opaque background behind it.
CONTRAST_CHECK = """selector => {
  const rgb = text => text.match(/[\\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => {
    const linear = [r, g, b].map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2];
  };
  const background = el => {
    for (; el; el = el.parentElement) {
      const colour = rgb(getComputedStyle(el).backgroundColor);
      if (colour.length < 4 || colour[3] === 1) return colour.slice(0, 3);
    }
    return [255, 255, 255];
  };
  return [...document.querySelectorAll(selector)].filter(el => el.offsetParent !== null).flatMap(el => {
    const [a, b] = [luminance(rgb(getComputedStyle(el).color)), luminance(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    return ratio < 4.5 ? [`${el.tagName}.${el.className} ${ratio.toFixed(2)}:1`] : [];
  });
}"""


def test_page_loads_accessible_and_makes_no_outside_request(browser, server, artifacts):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    failures: list[str] = []
    page.on("console", lambda message: failures.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: failures.append(str(error)))

    response = page.goto(server.url + "/")
    assert response.status == 200
    page.locator("#canvas").wait_for(state="visible")  # the script ran and showed the drawing panel
    page.screenshot(path=artifacts / "desktop-start.png", full_page=True)

    outside = [url for url in requested if not url.startswith(server.url + "/") and not url.startswith(("data:", "blob:"))]
    assert outside == [], f"requests outside the server: {outside}"
    assert {server.url + "/static/app.css", server.url + "/static/app.js"} <= set(requested)
    assert failures == []

    # The picker lists the shipped models with their input size and test accuracy, the best digits model chosen.
    options = page.locator("#model option").all_inner_texts()
    assert any(re.fullmatch(rf"{MODEL} v\d+ · 28×28 grey · \d+\.\d% accuracy", o.strip()) for o in options), options
    assert re.match(r"\d+\.\d% test accuracy on ", page.locator("#model-details").inner_text())
    assert page.locator("#model optgroup").first.get_attribute("label") == "Handwritten digits"
    assert page.locator("#model").input_value() == MODEL

    # Every control has a name a screen reader announces, and the page states its language.
    assert page.locator("html").get_attribute("lang") == "en"
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input, select, button, canvas')]
             .filter(el => !el.closest('[hidden]'))
             .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                           && !el.getAttribute('aria-labelledby') && !el.textContent.trim())
             .map(el => el.outerHTML)"""
    )
    assert unnamed == []

    # Text stands out from its background at least 4.5:1 (WCAG AA).
    low_contrast = page.evaluate(CONTRAST_CHECK, "h1, h2, label, .hint, .placeholder, button, select, .site-footer a")
    assert low_contrast == []

    # Keyboard: Tab reaches the model picker, and the focused control shows a focus ring.
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "model":
            break
    assert page.evaluate("document.activeElement.id") == "model"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    context.close()


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".swagger-ui .info .title"), ("/redoc", ".api-info h1")])
def test_api_documentation_renders_without_outside_requests(browser, server, artifacts, path, rendered):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    # ReDoc always asks for its maker's logo from a CDN; the page's Content-Security-Policy stops it in the browser.
    stopped_by_policy: set[str] = set()
    page.on("requestfailed", lambda request: stopped_by_policy.add(request.url) if request.failure == "csp" else None)
    response = page.goto(server.url + path)
    assert response.status == 200
    expect(page.locator(rendered).first).to_contain_text("pixelserve")
    expect(page.get_by_text("/v1/models/{name}/predict").first).to_be_attached()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=artifacts / f"api-docs{path.replace('/', '-')}.png")
    outside = [url for url in requested if not url.startswith((server.url + "/", "data:", "blob:")) and url not in stopped_by_policy]
    assert outside == [], f"requests outside the server: {outside}"
    context.close()


def test_form_upload_without_javascript_shows_the_right_label(browser, server, artifacts):
    context = browser.new_context(viewport=DESKTOP, java_script_enabled=False)
    page = context.new_page()
    answers = {}
    for expected, data in held_out_digits():
        page.goto(server.url + "/")
        assert page.locator("#draw-panel").is_hidden()  # drawing needs the script
        page.select_option("#model", MODEL)
        page.set_input_files("#file", file_payload(f"digit-{expected}.png", data))
        with page.expect_navigation():
            page.click("#predict-button")
        answers[expected] = page.locator("#prediction-label").inner_text()
        assert_result_complete(page)
        if expected == "7":
            page.screenshot(path=artifacts / "no-js-upload-result.png", full_page=True)
    correct = [expected for expected, answer in answers.items() if answer == expected]
    assert len(correct) >= 9, f"labels shown for digits 0-9: {answers}"
    context.close()


def test_no_javascript_form_reports_bad_input_in_the_page(browser, server, artifacts):
    context = browser.new_context(viewport=DESKTOP, java_script_enabled=False)
    page = context.new_page()
    page.goto(server.url + "/")
    page.set_input_files("#file", file_payload("notes.txt", b"these are not pixels", "text/plain"))
    with page.expect_navigation() as navigation:
        page.click("#predict-button")
    assert navigation.value.status == 415
    assert page.locator("#error").is_visible()
    assert "not a picture" in page.locator("#error-title").inner_text()
    assert page.locator("#result").is_hidden()
    assert page.locator("#predict-form").is_visible()  # the page still works: try again
    page.screenshot(path=artifacts / "no-js-bad-file.png", full_page=True)

    # A model that is gone since the page was rendered.
    response = page.request.post(
        server.url + "/",
        multipart={"model": "no-such-model", "file": file_payload("d.png", held_out_digits()[0][1])},
    )
    assert response.status == 404
    assert "That model does not exist." in response.text()
    context.close()


def test_no_javascript_upload_of_an_oversized_file_shows_the_error_in_the_page(browser, server, artifacts):
    context = browser.new_context(viewport=DESKTOP, java_script_enabled=False)
    page = context.new_page()
    page.goto(server.url + "/")
    page.set_input_files("#file", file_payload("big.png", b"\0" * (server.max_body_bytes + 1)))
    with page.expect_navigation() as navigation:
        page.click("#predict-button")
    assert navigation.value.status == 413
    assert page.locator("#error").is_visible()
    assert "too large" in page.locator("#error-title").inner_text()
    assert f"{server.max_body_bytes} bytes accepted" in page.locator("#error-message").inner_text()
    assert page.locator("#result").is_hidden()
    assert page.locator("#predict-form").is_visible()  # the page still works: choose a smaller file
    page.screenshot(path=artifacts / "no-js-oversized-file.png", full_page=True)
    context.close()


def test_drawn_and_dropped_digits_are_recognised_without_reload(browser, server, artifacts):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(server.url + "/")
    page.evaluate("window.sameDocument = true")

    draw(page, SEVEN)
    label = wait_for_result(page)
    page.screenshot(path=artifacts / "desktop-drawn-7.png", full_page=True)
    assert label == "7"
    assert_result_complete(page)

    page.click("#clear-button")
    assert page.locator("#result").is_hidden()
    assert page.locator("#canvas").evaluate(
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.every((v, i) => i % 4 === 3 || v === 0)"
    ), "the cleared canvas is all black"

    draw(page, ONE)
    assert wait_for_result(page) == "1"

    # A file dropped on the upload area.
    page.click("#clear-button")
    label, data = held_out_digits()[3]
    dropped = page.evaluate_handle(
        """bytes => { const transfer = new DataTransfer();
                      transfer.items.add(new File([new Uint8Array(bytes)], 'dropped.png', {type: 'image/png'}));
                      return transfer; }""",
        list(data),
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": dropped})
    assert wait_for_result(page) == label
    assert page.locator("#file").evaluate("input => input.files[0].name") == "dropped.png"
    assert page.evaluate("window.sameDocument") is True  # no page reload happened
    context.close()


def test_bad_files_and_failures_show_clear_messages(browser, server, artifacts):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(server.url + "/")

    def shows_error(title_part: str, screenshot: str = "") -> str:
        expect(page.locator("#error")).to_be_visible()  # hidden by the last Clear: this error is a new one
        expect(page.locator("#error-title")).to_contain_text(title_part)
        page.wait_for_function("document.getElementById('result-panel').getAttribute('aria-busy') === null")
        assert page.locator("#result").is_hidden()
        message = page.locator("#error-message").inner_text()
        if screenshot:
            page.screenshot(path=artifacts / screenshot, full_page=True)
        page.click("#clear-button")  # hides the error, so the next one is seen to appear
        expect(page.locator("#error")).to_be_hidden()
        return message

    page.set_input_files("#file", file_payload("notes.txt", b"these are not pixels", "text/plain"))
    assert shows_error("not a picture", "desktop-bad-file.png")

    # Too many bytes: refused before anything is sent, and by the server when sent anyway.
    too_big = b"\0" * (server.max_body_bytes + 1)
    page.set_input_files("#file", file_payload("big.png", too_big))
    assert "MB" in shows_error("too large")
    response = page.request.post(
        server.url + "/ui/api/predict", multipart={"model": MODEL, "file": file_payload("big.png", too_big)}
    )
    assert response.status == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    # Too many pixels: a small file that decodes to a huge picture.
    huge = png_bytes(Image.new("L", (9000, 9000)))
    assert len(huge) < server.max_body_bytes
    page.set_input_files("#file", file_payload("huge.png", huge))
    shows_error("picture is too large")

    # A model removed since the page was rendered.
    page.evaluate("""() => { const s = document.getElementById('model');
                             s.add(new Option('gone', 'no-such-model')); s.value = 'no-such-model'; }""")
    page.set_input_files("#file", file_payload("digit.png", held_out_digits()[0][1]))
    assert "no-such-model" in shows_error("model does not exist")
    page.select_option("#model", MODEL)

    # The server failing (as the app answers a bug, or as a proxy in front of it would), or unreachable.
    bug = {"error": {"code": "internal_error", "message": "internal error; quote request id 1f2e3d"}}
    page.route("**/ui/api/predict", lambda route: route.fulfill(status=500, json=bug))
    draw(page, ONE)
    assert "1f2e3d" in shows_error("went wrong on the server", "desktop-server-error.png")
    page.unroute("**/ui/api/predict")
    page.route("**/ui/api/predict", lambda route: route.fulfill(status=502, body="Bad Gateway"))
    draw(page, ONE)
    assert "502" in shows_error("went wrong on the server")
    page.unroute("**/ui/api/predict")
    page.route("**/ui/api/predict", lambda route: route.abort())
    draw(page, ONE)
    shows_error("could not be reached")
    page.unroute("**/ui/api/predict")

    # And the page recovers.
    page.click("#clear-button")
    draw(page, SEVEN)
    assert wait_for_result(page) == "7"
    assert page.locator("#error").is_hidden()
    context.close()


def test_phone_width_touch_drawing(browser, server, artifacts):
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(server.url + "/")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], "the page scrolls sideways"

    # A finger traces a 7 (touch events become pointer events of type "touch").
    box = page.locator("#canvas").bounding_box()
    cdp = context.new_cdp_session(page)
    points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in SEVEN[0]]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": points[0][0], "y": points[0][1]}]})
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        for t in np.linspace(0, 1, 15)[1:]:
            point = {"x": x0 + (x1 - x0) * t, "y": y0 + (y1 - y0) * t}
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    label = wait_for_result(page)
    page.screenshot(path=artifacts / "phone-drawn-7.png", full_page=True)
    assert label == "7"
    assert page.evaluate("window.scrollY") == 0, "drawing scrolled the page"
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    context.close()


def test_page_says_so_when_no_model_is_loaded(browser, empty_server, artifacts):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    response = page.goto(empty_server.url + "/")
    assert response.status == 200
    assert "No models are loaded" in page.locator("#no-models").inner_text()
    assert page.locator("#predict-button").is_disabled()
    assert page.locator("#file").is_disabled()
    page.screenshot(path=artifacts / "desktop-no-models.png", full_page=True)
    context.close()


def test_api_key_is_asked_for_and_checked(browser, keyed_server, artifacts):
    api_key = keyed_server.env["PIXELSERVE_API_KEY"]
    digit = file_payload("digit.png", held_out_digits()[0][1])
    # With the script: without the key the server refuses, with it the page shows the answer.
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(keyed_server.url + "/")
    assert page.locator("#model option[value=broken]").is_disabled()  # listed, but failed to load
    assert page.locator("#model").input_value() == "tiny-digits"
    page.set_input_files("#file", digit)
    expect(page.locator("#error-title")).to_contain_text("needs an API key")
    page.fill("#api-key", api_key)
    page.click("#predict-button")
    assert re.fullmatch(r"\d", wait_for_result(page))
    page.screenshot(path=artifacts / "desktop-api-key.png", full_page=True)
    context.close()

    # Without the script the key travels as a form field.
    context = browser.new_context(viewport=DESKTOP, java_script_enabled=False)
    page = context.new_page()
    for key, status in (("wrong-key", 401), (api_key, 200)):
        page.goto(keyed_server.url + "/")
        page.fill("#api-key", key)
        page.set_input_files("#file", digit)
        with page.expect_navigation() as navigation:
            page.click("#predict-button")
        assert navigation.value.status == status
    assert re.fullmatch(r"\d", page.locator("#prediction-label").inner_text())
    context.close()
