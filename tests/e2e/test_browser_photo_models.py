"""The page with an imported colour model beside a digit model: the canvas only for the digits, what the model
saw at its size and in colour, the most probable classes as bars."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.model_import.cli import main as import_main
from tests.e2e.conftest import Server, start_server
from tests.onnx_models import write_version
from tests.service.imported_models import build_models, encode, photo


@pytest.fixture(scope="module")
def photo_server(artifacts, tmp_path_factory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("photo-page")
    repository = base / "models"
    write_version(repository, "tiny-digits", 1)
    clip = build_models(base / "sources")[0]
    assert import_main([str(clip.onnx_path), "--name", "colour", "--model-repository", str(repository), *clip.args]) == 0
    yield from start_server(repository, artifacts / "server-photo.log")


def test_a_colour_model_takes_uploads_and_shows_what_it_saw(browser, photo_server, artifacts, tmp_path):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(photo_server.url + "/")
    page.locator("#canvas").wait_for(state="visible")  # the digits model is chosen first: it can be drawn for
    page.select_option("#model", "colour")
    assert page.locator("#draw-panel").is_hidden()  # a photo model: uploads only
    picture = tmp_path / "photo.jpg"
    picture.write_bytes(encode(photo(640, 480, seed=7), "JPEG", quality=90))
    page.set_input_files("#file", str(picture))
    page.locator("#result").wait_for(state="visible")
    seen = page.locator("#model-input")
    page.wait_for_function("document.getElementById('model-input').naturalWidth === 32")
    assert seen.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [32, 24]
    assert page.locator("#model-input-caption").inner_text() == "What the model saw (32×24)"
    # In colour: the shown pixels are not all grey.
    colourful = seen.evaluate("""img => { const c = document.createElement('canvas'); c.width = img.naturalWidth;
        c.height = img.naturalHeight; const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 1]) > 8 || Math.abs(d[i + 1] - d[i + 2]) > 8) n++;
        return n; }""")
    assert colourful > 100
    labels = page.locator("#probabilities .bar-label").all_inner_texts()
    assert len(labels) == 5 and "great white shark" in labels
    page.screenshot(path=artifacts / "desktop-colour-model.png", full_page=True)
    page.select_option("#model", "tiny-digits")
    assert page.locator("#draw-panel").is_visible()
