"""What serving makes of a model's own classes, for the typicality fit (training/trust.py)."""

from __future__ import annotations

import numpy as np

from training import trust


def test_more_enlarged_uploads_than_pictures_takes_each_picture_once(tmp_path, monkeypatch):
    # MNIST's validation split holds 800 pictures and the fit asks for ENLARGED_VALIDATION (1,000) of them: a refit of
    # a digit model failed with numpy's "Cannot take a larger sample than population".
    monkeypatch.setattr(trust, "PHOTO_CACHE", tmp_path)
    images = np.zeros((6, 28, 28), np.uint8)
    for i in range(6):
        images[i, 6 + i : 22, 10 + i // 2 : 14 + i // 2] = 255  # a stroke each, a different one
    labels = np.arange(6)
    x, y, filters = trust.enlarged_uploads_as_served(images, labels, "mnist", 10, seed=3)
    assert x.shape == (6, 1, 28, 28) and sorted(y.tolist()) == list(range(6)) and len(filters) == 6
    assert list(tmp_path.glob("mnist-enlarged-6-seed3-*.npz"))  # cached under the count it made
