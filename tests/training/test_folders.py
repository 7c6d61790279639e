"""Training on a folder of your own pictures: `python -m training train --dataset folder:PATH`."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from tests.training.picture_folders import CLASSES, draw_picture, write_picture_folder

from training.__main__ import main
from training.export import check_parity, export_onnx
from training.folders import FolderDatasetError, FolderOptions, load_folder
from training.models import ARCHITECTURES, build_model
from training.photo_batches import PhotoBatches, colour_jitter, random_crop_box
from training.photos import PhotoPreprocessing, decode

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return write_picture_folder(tmp_path_factory.mktemp("shapes") / "shapes", per_class=30, seed=0)


def reference_input(path, size, shorter, mean, std, channels=3):
    """An independent reading of the card: Pillow, upright, RGB on white, torchvision's Resize + CenterCrop."""
    with Image.open(path) as picture:
        picture.load()
        if picture.mode == "RGBA":
            white = Image.new("RGBA", picture.size, (255, 255, 255, 255))
            picture = Image.alpha_composite(white, picture)
        picture = picture.convert("RGB" if channels == 3 else "L")
    w, h = picture.size
    new = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)
    picture = picture.resize(new, Image.BILINEAR)
    top, left = round((new[1] - size) / 2), round((new[0] - size) / 2)
    pixels = np.asarray(picture.crop((left, top, left + size, top + size)), np.float32) / 255
    pixels = pixels.reshape(size, size, channels).transpose(2, 0, 1)
    return ((pixels - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None])[None]


@pytest.fixture(scope="module")
def colour_model(shapes_dir, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    code = main(["train", "--dataset", f"folder:{shapes_dir}", "--image-size", "32", "--epochs", "4",
                 "--batch-size", "16", "--models-dir", str(models), "--threads", "1", "--no-progress"])
    assert code == 0
    return models / "shapes-convnet" / "1"


def test_colour_model_card_follows_the_card_contract(colour_model, shapes_dir):
    card = json.loads((colour_model / "model.json").read_text())
    assert card["classes"] == sorted(CLASSES)
    assert card["input"] | {"mean": None, "std": None} == {
        "name": "input", "layout": "NCHW", "channels": 3, "color_order": "RGB", "height": 32, "width": 32,
        "dtype": "float32", "range": [0.0, 1.0], "mean": None, "std": None, "shape": ["N", 3, 32, 32],
    }
    assert card["output"]["name"] == "probabilities" and card["output"]["kind"] == "probabilities"
    assert card["output"]["shape"] == ["N", 3]
    assert card["preprocessing"]["method"] == "resize-crop"
    assert card["preprocessing"]["resize_shorter"] == 36 and card["preprocessing"]["interpolation"] == "bilinear"
    # The dataset's own statistics: dark noisy backgrounds, so well below mid-grey, and not flat.
    assert all(0.05 < m < 0.6 for m in card["input"]["mean"]) and all(0.05 < s < 0.5 for s in card["input"]["std"])
    assert card["training"]["dataset"] == f"folder:{shapes_dir.resolve()}"
    # 30 pictures per class, 20% (6) held out for the test, 10% of the rest (2) for validation.
    assert card["metrics"]["test_size"] == 18 and card["training"]["validation_size"] == 6
    assert card["training"]["train_size"] == 66
    for plot in ("learning_curves.png", "confusion_matrix.png", "misclassified.png", "report.json"):
        assert (colour_model / plot).is_file()
    # Colour is enough to tell these classes apart: a few epochs do far better than chance.
    assert card["metrics"]["test_accuracy"] >= 0.6


def test_model_answers_what_an_independent_reading_of_the_card_computes(colour_model, shapes_dir):
    card = json.loads((colour_model / "model.json").read_text())
    session = ort.InferenceSession(str(colour_model / "model.onnx"), providers=["CPUExecutionProvider"])
    # The test split, read independently: every picture through the reference pipeline, then ONNX Runtime.
    splits = load_folder(card["training"]["dataset"], FolderOptions(image_size=32))
    report = json.loads((colour_model / "report.json").read_text())
    correct = 0
    paths = sorted(p for p in shapes_dir.rglob("*") if p.is_file())
    inputs = {p: reference_input(p, 32, 36, card["input"]["mean"], card["input"]["std"]) for p in paths}
    ours = splits.test_images
    for row in ours:  # each test input equals the reference's for some picture of the folder
        assert min(np.abs(row - x[0]).max() for x in inputs.values()) < 1e-5
    for row, label in zip(ours, splits.test_labels):
        (probabilities,) = session.run(None, {"input": row[None]})
        correct += int(probabilities.argmax() == label)
    assert correct / len(ours) == pytest.approx(report["test"]["accuracy"])
    assert main(["evaluate", str(colour_model)]) == 0


def test_grey_resize_model_with_imagenet_statistics(shapes_dir, tmp_path, capsys):
    code = main(["train", "--dataset", f"folder:{shapes_dir}", "--image-size", "24", "--channels", "1",
                 "--resize", "resize", "--normalize", "imagenet", "--arch", "lenet5", "--epochs", "2",
                 "--crop-scale", "1", "--color-jitter", "0", "--no-hflip", "--name", "grey",
                 "--models-dir", str(tmp_path), "--threads", "1", "--no-progress"])
    assert code == 0
    card = json.loads((tmp_path / "grey" / "1" / "model.json").read_text())
    assert card["input"]["channels"] == 1 and card["input"]["color_order"] == "L"
    assert card["input"]["mean"] == [0.449] and card["input"]["std"] == [0.226]
    assert card["input"]["shape"] == ["N", 1, 24, 24]
    assert card["preprocessing"]["method"] == "resize" and "resize_shorter" not in card["preprocessing"]
    assert card["training"]["dataset_options"]["augmentation"] == {"min_scale": 1.0, "hflip": False, "jitter": 0.0}
    assert "global average pool" in card["architecture"]["description"]


def test_train_and_test_folders_are_the_splits(tmp_path):
    write_picture_folder(tmp_path / "data" / "train", per_class=12, seed=1)
    write_picture_folder(tmp_path / "data" / "test", per_class=4, seed=2, classes=("circles", "squares"))
    splits = load_folder(f"folder:{tmp_path / 'data'}", FolderOptions(image_size=32), validation_fraction=0.25)
    assert splits.dataset.classes == tuple(sorted(CLASSES))
    assert len(splits.test_labels) == 8 and set(splits.test_labels) == {0, 1}
    assert len(splits.val_labels) == 9 and len(splits.train_labels) == 27
    assert splits.test_images.shape == (8, 3, 32, 32) and splits.test_images.dtype == np.float32
    (tmp_path / "data" / "test" / "triangles").mkdir()
    shutil.copy(next((tmp_path / "data" / "test" / "circles").glob("*.jpg")), tmp_path / "data" / "test" / "triangles")
    with pytest.raises(FolderDatasetError, match="class folders that .* lacks: triangles"):
        load_folder(f"folder:{tmp_path / 'data'}", FolderOptions(image_size=32))


def test_the_test_split_does_not_depend_on_the_seed(shapes_dir):
    one = load_folder(f"folder:{shapes_dir}", FolderOptions(image_size=16), seed=1)
    two = load_folder(f"folder:{shapes_dir}", FolderOptions(image_size=16), seed=2)
    np.testing.assert_array_equal(one.test_views, two.test_views)  # the same pictures (the mean / std move with the training split)
    assert not np.array_equal(one.val_images, two.val_images)


def run_and_fail(tmp_path, capsys, folder):
    code = main(["train", "--dataset", f"folder:{folder}", "--image-size", "32", "--epochs", "1",
                 "--models-dir", str(tmp_path / "models"), "--threads", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert not (tmp_path / "models").exists()  # nothing published
    return err


def test_a_class_folder_without_pictures_is_a_clear_error(tmp_path, capsys):
    folder = write_picture_folder(tmp_path / "pics", per_class=5)
    (tmp_path / "pics" / "empty").mkdir()
    (tmp_path / "pics" / "notes").mkdir()
    (tmp_path / "pics" / "notes" / "readme.txt").write_text("not a picture")
    err = run_and_fail(tmp_path, capsys, folder)
    assert f"class folder {folder / 'empty'} holds no pictures; each class needs pictures with one of" in err
    shutil.rmtree(folder / "empty")
    err = run_and_fail(tmp_path, capsys, folder)
    assert "notes holds no pictures; it holds 1 other file(s), e.g. readme.txt" in err


def test_unreadable_pictures_are_a_clear_error(tmp_path, capsys):
    folder = write_picture_folder(tmp_path / "pics", per_class=5)
    (folder / "circles" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (folder / "squares" / "empty.png").write_bytes(b"")
    err = run_and_fail(tmp_path, capsys, folder)
    assert "2 picture(s) in" in err and "cannot be read" in err
    assert "broken.jpg" in err and "empty.png" in err and "Remove or replace them" in err


def test_not_a_dataset_folder_is_a_clear_error(tmp_path, capsys):
    assert "is not a folder" in run_and_fail(tmp_path, capsys, tmp_path / "nowhere")
    write_picture_folder(tmp_path / "one", per_class=3, classes=("circles",))
    assert "holds 1 class folder(s); a classifier needs at least 2" in run_and_fail(tmp_path, capsys, tmp_path / "one")


def test_picture_options_are_checked(capsys):
    with pytest.raises(SystemExit, match=r"--channels 1\|3 is for folders"):
        main(["train", "--dataset", "mnist", "--channels", "3"])
    with pytest.raises(SystemExit, match="1 \\(grey\\) or 3 \\(RGB\\), got 2"):
        main(["train", "--dataset", "folder:x", "--channels", "2"])
    with pytest.raises(SystemExit, match="--shift is for the 28x28 datasets"):
        main(["train", "--dataset", "folder:x", "--shift", "2"])


@pytest.mark.parametrize(("arch", "channels", "size"), [
    *((arch, 3, 64) for arch in ARCHITECTURES),  # colour, larger: pooled convnets, wider dense layers
    ("convnet", 1, 40), ("lenet5", 1, 40),  # sizes that do not halve evenly
    ("convnet", 3, 28),  # colour at the digits' size keeps the flatten
])
def test_wider_and_larger_models_export_faithfully(arch, channels, size):
    torch.manual_seed(0)
    model = build_model(arch, 5, in_channels=channels, image_size=size)
    model.train()
    with torch.no_grad():  # non-trivial batch-norm statistics
        model(torch.randn(32, channels, size, size))
    model.eval()
    proto = export_onnx(model, (channels, size, size))
    inputs = np.random.default_rng(0).normal(size=(512, channels, size, size)).astype(np.float32)
    probabilities = check_parity(proto, model, inputs)  # raises unless ONNX Runtime agrees with torch
    assert probabilities.shape == (512, 5)


def test_decode_is_upright_on_white_and_first_frame(tmp_path):
    picture = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown turned 90 degrees clockwise
    picture.save(tmp_path / "rotated.jpg", exif=exif)
    assert decode(tmp_path / "rotated.jpg", 3).size == (20, 40)
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    clear.save(tmp_path / "clear.png")
    assert np.asarray(decode(tmp_path / "clear.png", 3)).min() == 255
    frames = [Image.new("L", (8, 8), value) for value in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert abs(int(np.asarray(decode(tmp_path / "anim.gif", 1)).mean()) - 10) <= 1


def test_random_crops_stay_inside_and_cover_the_scale():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(300):
        left, top, right, bottom = random_crop_box(64, 64, 0.35, rng)
        assert 0 <= left < right <= 64 and 0 <= top < bottom <= 64
        areas.append((right - left) * (bottom - top) / (64 * 64))
    assert min(areas) >= 0.3 and max(areas) > 0.9
    assert random_crop_box(400, 10, 0.9, rng) == (193, 0, 206, 10)  # no fit: the centre, ratio 4:3


def test_colour_jitter_varies_pictures_within_range():
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(64, 3, 8, 8)
    jittered = colour_jitter(batch.clone(), 0.4, generator)
    assert jittered.min() >= 0 and jittered.max() <= 1
    assert not torch.allclose(jittered, batch)
    assert torch.equal(colour_jitter(batch.clone(), 0.0, generator), batch)


def test_photo_batches_are_normalised_model_inputs():
    rng = np.random.default_rng(0)
    pictures = [np.asarray(draw_picture("circles", rng)) for _ in range(4)]
    preprocessing = PhotoPreprocessing(32, 3, "resize-crop", 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    batches = PhotoBatches(pictures, np.arange(4), preprocessing, min_scale=0.5, hflip=True, jitter=0.2)
    out = batches.batch(torch.arange(4), torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -2.0 - 1e-6 and out.max() <= 2.0 + 1e-6  # (x - 0.5) / 0.25 for x in [0, 1]
