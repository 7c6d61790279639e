"""bench/garment_seeding.py: its copy of the colour-seeded start behaves as the preprocessing did before the whole-item
start, and it measures both starts on a folder laid out as the clothing dataset is."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

import service.imaging.garments as garments
from bench import garment_seeding
from service.imaging.garments import find_garment
from tests.service.test_imaging import patterned_dress_on_carpet
from training import real_clothes
from training.data import PROJECT_ROOT


def test_the_colour_seeded_start_keeps_only_a_patterned_dress_s_print(monkeypatch):
    rgb, dress = patterned_dress_on_carpet(0)
    monkeypatch.setattr(garments, "_grabcut", garment_seeding.grabcut_seeded_by_colour)
    assert (find_garment(rgb).ink > 0).sum() < 0.3 * dress.sum()


def test_it_measures_both_starts_and_leaves_the_served_one_in_place(tmp_path, monkeypatch, capsys):
    import cv2

    served, threads = garments._grabcut, cv2.getNumThreads()
    rows = []
    for n in range(2):
        rgb, _ = patterned_dress_on_carpet(n)
        buffer = io.BytesIO()
        Image.fromarray(np.rint(rgb * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=92)
        (tmp_path / "validation" / "dress").mkdir(parents=True, exist_ok=True)
        (tmp_path / "validation" / "dress" / f"{n}.jpg").write_bytes(buffer.getvalue())
        rows.append(real_clothes.RealClothesPhoto("validation", f"validation/dress/{n}.jpg",
                                                  hashlib.sha256(buffer.getvalue()).hexdigest(), "Dress"))
    monkeypatch.setattr(real_clothes, "read_manifest", lambda: rows)
    model = PROJECT_ROOT / "models" / "fashion-convnet" / "3"
    assert garment_seeding.main(["--photos", str(tmp_path), "--model", str(model), "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 validation photos" in out
    table = [line for line in out.splitlines() if line.startswith("| ") and "%" in line]
    assert [line.split(" | ")[0] for line in table] == ["| seeded by colour (before)", "| whole item (served)"]
    assert garments._grabcut is served and cv2.getNumThreads() == threads
