"""The pictures the outlier head is fitted on (training/doodles.py): drawings of each kind and symbols, either
polarity, that the digit preprocessing accepts, and a clear error where the fonts are missing."""

from __future__ import annotations

import numpy as np
import pytest

from training import doodles as d


def test_drawings_come_in_each_kind_and_either_polarity_with_ink_on_them():
    pictures = d.doodles(40, seed=3)
    assert pictures.shape == (40, d.SIDE, d.SIDE) and pictures.dtype == np.uint8
    paper = np.median(pictures.reshape(40, -1), axis=1)
    assert (paper > 128).any() and (paper < 128).any()  # dark on light and light on dark
    ink = (np.abs(pictures.astype(int) - paper[:, None, None]) > 100).mean(axis=(1, 2))
    assert (ink > 0.005).all() and (ink < 0.5).all()  # a stroke, not a blank or a filled frame
    assert not np.array_equal(pictures[0], d.doodles(40, seed=4)[0])


def test_symbols_hold_no_digit_or_latin_letter_and_are_drawn():
    assert not any(c.isdigit() or ("a" <= c.lower() <= "z") for c in d.SYMBOLS)
    pictures = d.symbols(12, seed=5)
    spread = pictures.reshape(12, -1).std(axis=1)
    assert (spread > 10).all()


def test_missing_fonts_are_named(monkeypatch, tmp_path):
    monkeypatch.setattr(d, "FONT_FILES", str(tmp_path / "none*.ttf"))
    with pytest.raises(FileNotFoundError, match="fonts-dejavu-core"):
        d.symbols(1, seed=0)


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="curves"):
        d.doodle("zigzag", np.random.default_rng(0))


def test_as_served_they_are_digit_model_inputs(tmp_path, monkeypatch):
    import training.trust

    monkeypatch.setattr(training.trust, "PHOTO_CACHE", tmp_path)
    x = d.doodles_as_served("mnist-digit", 8, seed=1)
    assert x.shape[1:] == (1, 28, 28) and len(x) >= 10  # 8 drawings and 4 symbols, at most a couple refused
    assert list(tmp_path.glob("doodles-mnist-digit-8-*.npz"))  # cached
    np.testing.assert_array_equal(d.doodles_as_served("mnist-digit", 8, seed=1), x)
