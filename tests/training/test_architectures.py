import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from training.data import load_splits
from training.models import ARCHITECTURES, LeCun1989, build_model, count_parameters
from training.pipeline import train_and_publish
from training.train import TrainConfig, augment, fit, predict_probabilities


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_output_shape_and_probabilities(arch):
    model = build_model(arch, num_classes=7).eval()
    logits = model(torch.rand(5, 1, 28, 28))
    assert logits.shape == (5, 7)
    probabilities = predict_probabilities(model, np.zeros((3, 28, 28), np.uint8))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_mlp_options():
    model = build_model("mlp", hidden=(64, 32, 16), activation="hardtanh", dropout=0.1)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linear] == [64, 32, 16, 10]
    assert sum(isinstance(m, torch.nn.Hardtanh) for m in model.modules()) == 3
    assert "64-32-16" in model.description and "hardtanh" in model.description
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        build_model("mlp", activation="gelu")


def test_lecun1989_has_partial_connections_and_tanh():
    model = LeCun1989()
    assert all(conv.in_channels == 8 and conv.out_channels == 4 for conv in model.h2)
    assert model.h1.out_channels == 12 and model.h3.out_features == 30
    # Shared 5x5 filters keep it tiny: a few thousand weights, like the 1989 net's 9,760.
    assert count_parameters(model) < 30_000


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'resnet'; choose one of: softmax, mlp"):
        build_model("resnet")


def test_augment_shifts_with_zero_fill_and_mirrors():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10, 10] = 1.0
    batch = image.repeat(200, 1, 1, 1)
    shifted = augment(batch, shift=2, hflip=False, generator=torch.Generator().manual_seed(0))
    positions = {tuple(int(v) for v in (s[0] == 1).nonzero()[0]) for s in shifted}
    assert positions == {(10 + dy, 10 + dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert torch.all(shifted.sum(dim=(1, 2, 3)) == 1.0)
    flipped = augment(batch, shift=0, hflip=True, generator=torch.Generator().manual_seed(0))
    columns = {int((f[0] == 1).nonzero()[0][1]) for f in flipped}
    assert columns == {10, 17}


# Narrower than the shipped models, to keep the test quick; the layer structure is the same.
SMALL_OPTIONS = {"mlp": {"hidden": (64,)}, "convnet": {"channels": (8, 16), "hidden": (32,)}}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_learns_a_small_slice(arch, full_dataset_dir):
    splits = load_splits("mnist", full_dataset_dir, seed=0)
    splits.train_images, splits.train_labels = splits.train_images[:1200], splits.train_labels[:1200]
    model = build_model(arch, **SMALL_OPTIONS.get(arch, {}))
    config = TrainConfig(epochs=3, batch_size=64, lr=3e-3, patience=3, seed=0, threads=1)
    result = fit(model, splits, config, progress=False)
    accuracy = (predict_probabilities(model, splits.test_images).argmax(1) == splits.test_labels).mean()
    assert accuracy > 0.6, f"{arch}: test accuracy {accuracy:.3f} (chance is 0.1)"
    assert len(result.history) >= 1 and result.best_val_accuracy > 0.6
    assert result.images_per_s > 0 and result.wall_time_s > 0
    # Normalization statistics are learned from the training images and kept in the model.
    assert 0 < float(model.normalize.mean) < 1 and float(model.normalize.std) > 0


def test_early_stopping_restores_the_best_weights(full_dataset_dir):
    splits = load_splits("mnist", full_dataset_dir, seed=0)
    splits.train_images, splits.train_labels = splits.train_images[:500], splits.train_labels[:500]
    model = build_model("softmax")
    # A learning rate this large makes validation accuracy bounce; patience 1 stops at the first drop.
    config = TrainConfig(epochs=30, lr=5.0, schedule="constant", patience=1, threads=1)
    result = fit(model, splits, config, progress=False)
    best = max(result.history, key=lambda s: (s.val_accuracy, -s.val_loss))
    assert result.best_epoch == best.epoch and len(result.history) < 30
    val_accuracy = (predict_probabilities(model, splits.val_images).argmax(1) == splits.val_labels).mean()
    assert val_accuracy == pytest.approx(best.val_accuracy)


def test_the_seed_governs_initial_weights_and_training(mnist_t10k_dir, tmp_path):
    def weights(seed: int, name: str, process_state: int) -> list[np.ndarray]:
        torch.manual_seed(process_state)  # whatever state the process is in must not matter
        version_dir, _ = train_and_publish(
            dataset="mnist", arch="mlp", name=name, models_dir=tmp_path, arch_options={"hidden": (16,)},
            config=TrainConfig(epochs=1, seed=seed, threads=1), data_dir=mnist_t10k_dir, limit_train=300,
            progress=False,
        )
        graph = onnx.load(version_dir / "model.onnx").graph
        return [onnx.numpy_helper.to_array(t) for t in graph.initializer]

    first, again, other = weights(0, "a", 1), weights(0, "b", 2), weights(1, "c", 1)
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))
