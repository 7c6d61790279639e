"""The documentation site builds with `mkdocs build --strict`: no broken link, anchor or nav entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build(tmp_path: Path, config: Path = ROOT / "mkdocs.yml") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_docs_build_strict(tmp_path):
    result = build(tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file() and (site / "service" / "index.html").is_file()
    # A link out of docs/ lands on a page of its own.
    assert (site / "_repository" / "bench" / "index.html").is_file()  # README.md is a folder's index page


@pytest.mark.parametrize("link", ["missing.md", "../bench/MISSING.md"])
def test_a_broken_link_fails_the_build(tmp_path, link):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(f"# Home\n\n[gone]({link})\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"site_name: t\ndocs_dir: {docs}\nhooks:\n  - {ROOT / 'scripts' / 'mkdocs_repository_links.py'}\n")
    result = build(tmp_path, config)
    assert result.returncode != 0 and link.split("/")[-1] in result.stderr
