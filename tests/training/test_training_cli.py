import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tests.training.synthetic_data import write_idx

from training.__main__ import main
from training.data import PROJECT_ROOT, TEST_IMAGES, TEST_LABELS


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=300)


def test_help_explains_every_command_and_option():
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for option in ("--dataset", "--data-dir", "--download", "--arch", "--hidden", "--activation", "--epochs",
                   "--lr", "--schedule", "--shift", "--patience", "--seed", "--threads", "--name", "--models-dir"):
        assert option in result.stdout
    for command in ("train", "evaluate", "download"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0


def test_unknown_dataset_is_a_clear_error():
    result = run_cli("train", "--dataset", "cifar10")
    assert result.returncode == 2
    assert "invalid choice: 'cifar10' (choose from 'fashion-mnist', 'mnist')" in result.stderr


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path):
    result = run_cli("train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert f"error: dataset 'fashion-mnist' not found in {tmp_path / 'nowhere'}" in result.stderr
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert "--data-dir" in result.stderr and "--download" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_data_is_a_clear_error(tmp_path, capsys):
    write_idx(tmp_path / TEST_IMAGES, np.zeros((10, 28, 28), np.uint8))
    write_idx(tmp_path / TEST_LABELS, np.zeros(9, np.uint8))
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    assert "holds 10 images but" in capsys.readouterr().err


def test_bad_option_value_is_refused(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--dataset", "mnist", "--hidden", "wide"])
    assert exited.value.code == 2
    assert "expected comma-separated integers" in capsys.readouterr().err


def test_train_publishes_a_model(mnist_t10k_dir, tmp_path, capsys):
    code = main(["train", "--dataset", "mnist", "--data-dir", str(mnist_t10k_dir), "--arch", "mlp",
                 "--hidden", "32", "--activation", "tanh", "--epochs", "1", "--limit-train", "800",
                 "--models-dir", str(tmp_path), "--threads", "1", "--no-progress"])
    assert code == 0
    assert f"published {tmp_path / 'mnist-mlp' / '1'}: test accuracy" in capsys.readouterr().out
    card = json.loads((tmp_path / "mnist-mlp" / "1" / "model.json").read_text())
    assert card["architecture"]["options"] == {"hidden": [32], "activation": "tanh"}
    assert card["training"]["train_size"] == 800


def test_evaluate_checks_the_card_and_measures_accuracy(published_model, mnist_t10k_dir, capsys):
    assert main(["evaluate", str(published_model), "--data-dir", str(mnist_t10k_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    card = json.loads((published_model / "model.json").read_text())
    assert result["agrees_with_card"] is True and result["test_size"] == 600
    assert result["test_accuracy"] == pytest.approx(card["metrics"]["test_accuracy"], abs=5e-5)


def test_evaluate_refuses_a_tampered_model(published_model, mnist_t10k_dir, tmp_path, capsys):
    copy = tmp_path / "1"
    shutil.copytree(published_model, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    assert main(["evaluate", str(copy), "--data-dir", str(mnist_t10k_dir)]) == 1
    assert "differs from the card's" in capsys.readouterr().err


def test_evaluate_needs_a_version_folder(tmp_path):
    with pytest.raises(SystemExit, match="holds no model.json"):
        main(["evaluate", str(tmp_path)])


def test_calibrating_a_calibrated_version_is_refused_and_publishes_nothing(tmp_path):
    """A shipped version has its temperature and typicality in the graph: a second fit would stack them."""
    shutil.copytree(PROJECT_ROOT / "models" / "mnist-mlp" / "2", tmp_path / "mnist-mlp" / "2")
    result = run_cli("calibrate", str(tmp_path / "mnist-mlp" / "2"))
    assert result.returncode == 1
    assert "is calibrated already (temperature" in result.stderr and "--refit-typicality" in result.stderr
    assert sorted(p.name for p in (tmp_path / "mnist-mlp").iterdir()) == ["2"]
