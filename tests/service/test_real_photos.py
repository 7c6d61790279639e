"""The real photos of issue 18 (tests/data/real_photos.csv): each listed once, with a label a model knows,
its licence, author, source and sha256. Their accuracy per condition against the issue's goals is checked
by tests/service/real_photos_goals.py, run by name (docs/photos.md says why it is not in the suite yet)."""

from __future__ import annotations

from training.real_photos import GOALS, MODEL_FOR, read_manifest

FASHION = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}


def test_the_manifest_names_each_photo_once_with_a_known_label_and_licence():
    manifest = read_manifest()
    assert len({photo.file for photo in manifest}) == len(manifest) > 0
    for photo in manifest:
        assert photo.condition in GOALS and photo.condition in MODEL_FOR, photo
        known = FASHION if MODEL_FOR[photo.condition] == "fashion-convnet" else set("0123456789")
        assert photo.label in known, photo
        assert photo.file.startswith(photo.condition + "/"), photo
        assert photo.licence and photo.author and photo.source and len(photo.sha256) == 64, photo
