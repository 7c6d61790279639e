"""Take docs/images/web-page.png: `python -m service` on a free loopback port, a 7 drawn in Chromium.

    .venv/bin/python scripts/screenshot-web-page.py [--out docs/images/web-page.png]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
SEVEN = [(0.27, 0.2), (0.73, 0.2), (0.45, 0.85)]  # fractions of the canvas


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "web-page.png")
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "PIXELSERVE_PROVIDERS": "cpu", "PIXELSERVE_LOG_LEVEL": "warning"}
    server = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(url + "/v2/health/ready", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                                 args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(url + "/")
            page.select_option("#model", "mnist-convnet") if page.locator("select#model").count() else None
            box = page.locator("#canvas").bounding_box()
            points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in SEVEN]
            page.mouse.move(*points[0])
            page.mouse.down()
            for point in points[1:]:
                page.mouse.move(*point, steps=12)
            page.mouse.up()
            page.locator("#result").wait_for(state="visible")
            page.wait_for_function("document.getElementById('result-panel').getAttribute('aria-busy') === null")
            label = page.locator("#prediction-label").inner_text()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        print(f"{args.out}: predicted {label}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
