"""The real clothes photos fine-tuning learns from (training/real_clothes.py): their manifest never shares a photo
with the real test set, labels follow the rules it states, and training draws them as it says."""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from training import real_clothes
from training.__main__ import main as training_main
from training.photo_mix import PhotoMixBatches
from training.real_clothes import CLASSES, FOLDER_LABELS, SHOE_LABELS, RealClothesPhoto, read_manifest
from training.real_photos import MANIFEST as TEST_MANIFEST
from training.train import TrainConfig


def test_no_photo_of_the_real_test_set_is_trained_on():
    test_rows = list(csv.DictReader(TEST_MANIFEST.open(newline="")))
    test_hashes = {row["sha256"] for row in test_rows}
    test_sources = {row["source"].split(":", 1)[1] for row in test_rows if "clothing-dataset-small" in row["source"]}
    training = read_manifest()
    assert len(test_sources) == 70  # every natural test photo comes from that dataset
    assert not test_hashes & {photo.sha256 for photo in training}
    assert not test_sources & {photo.source for photo in training}
    assert len({photo.sha256 for photo in training}) == len(training)  # no exact copy listed twice


def test_the_labels_follow_the_stated_rules():
    training = read_manifest()
    assert len(training) > 2500
    for photo in training:
        split, folder, _ = photo.source.split("/")
        assert photo.split == split and split in real_clothes.SPLITS
        assert photo.label == FOLDER_LABELS[folder] if folder != "shoes" else photo.label in SHOE_LABELS
    per_class = Counter(photo.label for photo in training if photo.split == "train")
    assert set(per_class) == set(CLASSES) - {"Bag"}  # every class but Bag has real photos
    assert all(len(photo.sha256) == 64 for photo in training)


def png(colour_box: bool) -> bytes:
    picture = Image.new("RGB", (120, 160), "white")
    if colour_box:
        picture.paste((40, 40, 90), (30, 20, 90, 140))  # a dark item on a white backdrop: a product shot
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_photos_become_what_an_upload_becomes_and_are_cached(tmp_path, monkeypatch):
    from service.imaging import to_model_input

    folder = tmp_path / "dataset"
    (folder / "train" / "dress").mkdir(parents=True)
    rows = []
    for name, data in (("item.png", png(True)), ("blank.png", png(False))):
        (folder / "train" / "dress" / name).write_bytes(data)
        rows.append(RealClothesPhoto("train", f"train/dress/{name}", hashlib.sha256(data).hexdigest(), "Dress"))
    manifest = tmp_path / "manifest.csv"
    real_clothes.write_manifest(rows, manifest)
    monkeypatch.setattr(real_clothes, "CACHE_DIR", tmp_path / "cache")

    photos, labels = real_clothes.processed(folder, "train", manifest)
    assert photos.shape == (1, 28, 28) and labels.tolist() == [CLASSES.index("Dress")]  # the blank one is refused
    expected = to_model_input(png(True), "fashion-fit", max_pixels=40_000_000)[0]
    np.testing.assert_array_equal(photos[0], np.rint(expected * 255).astype(np.uint8))
    assert len(list((tmp_path / "cache").glob("train-2-*.npz"))) == 1
    again, _ = real_clothes.processed(folder, "train", manifest)
    np.testing.assert_array_equal(again, photos)

    (folder / "train" / "dress" / "item.png").write_bytes(png(False))  # not the file the label was given to
    monkeypatch.setattr(real_clothes, "CACHE_DIR", tmp_path / "other-cache")
    with pytest.raises(ValueError, match="sha256 differs"):
        real_clothes.processed(folder, "train", manifest)


def test_a_batch_draws_its_share_of_real_photos_class_balanced():
    clean = np.zeros((1000, 28, 28), np.uint8)
    splits = SimpleNamespace(train_images=clean, train_labels=np.full(1000, 8, np.int64))  # all Bag
    real_labels = np.array([0] * 90 + [9] * 10, np.int64)  # 90 T-shirts, 10 ankle boots
    real = (np.full((100, 28, 28), 255, np.uint8), real_labels)
    config = TrainConfig(real_mix=0.3, real_balance=1.0)
    batches = PhotoMixBatches(splits, config, real=real)
    inputs, targets = batches.batch(torch.arange(1000), torch.Generator().manual_seed(0))
    from_real = inputs.flatten(1).amax(1) > 0
    assert 0.25 < from_real.float().mean() < 0.35
    assert set(targets[~from_real].tolist()) == {8}
    drawn = Counter(targets[from_real].tolist())
    assert set(drawn) == {0, 9} and 0.7 < drawn[9] / drawn[0] < 1.4  # balanced: as many boots as T-shirts

    with pytest.raises(ValueError, match="more than 1"):
        PhotoMixBatches(splits, TrainConfig(photo_mix=0.6, real_mix=0.6), (np.arange(3), clean[:3]), real)


def test_real_photos_are_for_clothes_only(tmp_path):
    with pytest.raises(SystemExit, match="photos of clothes"):
        training_main(["train", "--dataset", "mnist", "--real-photos", str(tmp_path)])


def test_a_typicality_refit_of_a_version_that_learned_from_real_photos_needs_them(tmp_path):
    """fashion-convnet 4 learned from real photos; its typicality was fitted on them too, so a refit without them
    would silently flag more real photos: it is refused with what to pass, before anything is loaded or written."""
    import shutil

    from training.data import PROJECT_ROOT

    version = tmp_path / "fashion-convnet" / "4"
    shutil.copytree(PROJECT_ROOT / "models" / "fashion-convnet" / "4", version)
    before = (version / "model.onnx").read_bytes()
    with pytest.raises(SystemExit, match="learned from real photos of clothes.*pass --real-photos DIR"):
        training_main(["calibrate", str(version), "--refit-typicality"])
    with pytest.raises(SystemExit, match="goes with --refit-typicality"):
        training_main(["calibrate", str(version), "--real-photos", str(tmp_path)])
    with pytest.raises(SystemExit, match="is not a folder"):
        training_main(["calibrate", str(version), "--refit-typicality", "--real-photos", str(tmp_path / "none")])
    assert (version / "model.onnx").read_bytes() == before


def test_the_real_photos_join_the_served_pictures_as_a_group_of_their_own():
    from service.trust.fit import ServedPictures
    from training.trust import REAL_PHOTO_FLAG_RATE, _with_real_photos

    served = ServedPictures(train_inputs=np.zeros((3, 1, 28, 28), np.float32), train_labels=np.array([0, 1, 12]),
                            validation_inputs=np.zeros((2, 1, 28, 28), np.float32), test={"validation_photos": np.zeros((2, 1, 28, 28))},
                            rates={"validation_photos": 0.05}, train_groups=np.array([0, 0, 1]), description="photos")
    real = _with_real_photos(served, np.ones((2, 1, 28, 28), np.float32), np.array([50, 53]), np.ones((4, 1, 28, 28)), "; real")
    assert real.train_inputs.shape == (5, 1, 28, 28) and real.train_labels.tolist() == [0, 1, 12, 50, 53]
    assert real.train_groups.tolist() == [0, 0, 1, 2, 2]
    assert set(real.test) == {"validation_photos", "validation_real_photos"} and len(real.test["validation_real_photos"]) == 4
    assert real.rates == {"validation_photos": 0.05, "validation_real_photos": REAL_PHOTO_FLAG_RATE}
    assert real.description == "photos; real"
