"""The model repository on its own: validation, defaults, watching the disk, retiring versions."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from service.errors import ModelNotFound, ModelNotReady, VersionNotFound
from service.observability import Metrics
from service.inference.registry import LOADING, READY, UNAVAILABLE, ModelRepository
from tests.onnx_models import make_card, make_classifier, reference_probabilities, write_version
from tests.service.conftest import make_settings

X = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)


def run(coroutine):
    return asyncio.run(coroutine)


def state(repository: ModelRepository, name: str, version: int) -> tuple[str, str | None]:
    status = {v.version: v for v in repository.describe(name).versions}[version]
    return status.state, status.reason


def test_highest_ready_version_is_the_default_and_any_version_can_be_asked_for(tmp_path):
    write_version(tmp_path, "digits", 1)
    write_version(tmp_path, "digits", 10)  # numeric order, not text order
    write_version(tmp_path, "digits", 2)

    async def scenario():
        repository = ModelRepository(make_settings(tmp_path))
        await repository.start()
        try:
            assert repository.get("digits").version == 10
            served = repository.get("digits", 2)
            np.testing.assert_allclose(await served.predict(X), reference_probabilities(X, seed=2), atol=1e-5)
            with pytest.raises(VersionNotFound):
                repository.get("digits", 3)
            with pytest.raises(ModelNotFound):
                repository.get("letters")
            with pytest.raises(ModelNotFound, match="not a valid model name"):
                repository.get("../digits")
        finally:
            await repository.stop()

    run(scenario())


def _write_raw(root: Path, name: str, version: int, card: dict, onnx_bytes: bytes) -> None:
    directory = root / name / str(version)
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(onnx_bytes)
    (directory / "model.json").write_text(json.dumps(card))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda card: card.update(name="other"), "describes 'other'"),
        (lambda card: card.update(version=9), "version 9"),
        (lambda card: card.update(classes=["a", "a"]), "distinct"),
        (lambda card: card.update(classes=["a", "b", "c"]), "[N, 3]"),
        (lambda card: card.pop("preprocessing"), "'preprocessing'"),
        (lambda card: card["input"].update(name="pixels"), "promises one input 'pixels'"),
        (lambda card: card["output"].update(name="logits"), "no output 'logits'"),
        (lambda card: card["onnx"].update(file="other.onnx"), "requires 'model.onnx'"),
    ],
)
def test_cards_that_do_not_match_their_model_are_rejected_with_the_reason(tmp_path, change, reason):
    onnx_bytes = make_classifier(seed=1).SerializeToString()
    card = make_card("digits", 1, onnx_bytes)
    change(card)
    _write_raw(tmp_path, "digits", 1, card, onnx_bytes)
    write_version(tmp_path, "digits", 2)

    async def scenario():
        repository = ModelRepository(make_settings(tmp_path))
        await repository.start()
        try:
            found_state, found_reason = state(repository, "digits", 1)
            assert found_state == UNAVAILABLE and reason in found_reason
            assert repository.get("digits").version == 2
            with pytest.raises(ModelNotReady, match="version 1"):
                repository.get("digits", 1)
        finally:
            await repository.stop()

    run(scenario())


def test_unreadable_card_is_reported(tmp_path):
    directory = tmp_path / "digits" / "1"
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(make_classifier().SerializeToString())
    (directory / "model.json").write_text("{ not json")

    async def scenario():
        repository = ModelRepository(make_settings(tmp_path))
        await repository.start()
        assert state(repository, "digits", 1)[0] == UNAVAILABLE
        assert "not readable JSON" in state(repository, "digits", 1)[1]
        assert repository.describe("digits").state == UNAVAILABLE
        await repository.stop()

    run(scenario())


def test_staging_and_non_version_directories_are_ignored(tmp_path):
    write_version(tmp_path, "digits", 1)
    for odd in (".tmp-abc", "0", "01", "latest", "-1"):
        shutil.copytree(tmp_path / "digits" / "1", tmp_path / "digits" / odd)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "README.txt").write_text("not a model")

    async def scenario():
        repository = ModelRepository(make_settings(tmp_path))
        await repository.start()
        assert repository.names() == ["digits"]
        assert [v.version for v in repository.describe("digits").versions] == [1]
        await repository.stop()

    run(scenario())


def test_missing_repository_fails_loudly(tmp_path):
    with pytest.raises(FileNotFoundError, match="PIXELSERVE_MODEL_REPOSITORY"):
        run(ModelRepository(make_settings(tmp_path / "absent")).start())


async def _until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)


def test_watch_picks_up_new_versions_and_waits_for_half_written_directories(tmp_path):
    write_version(tmp_path, "digits", 1)
    onnx_bytes = make_classifier(seed=3).SerializeToString()

    async def scenario():
        repository = ModelRepository(make_settings(tmp_path, watch_interval_s=0.05))
        await repository.start()
        try:
            write_version(tmp_path, "digits", 2)  # atomic, as the trainer writes
            await _until(lambda: repository.get("digits").version == 2)

            # A directory filled in place: first only the ONNX file, then half of the card.
            filling = tmp_path / "digits" / "3"
            filling.mkdir()
            (filling / "model.onnx").write_bytes(onnx_bytes)
            await _until(lambda: 3 in [v.version for v in repository.describe("digits").versions])
            assert state(repository, "digits", 3) == (LOADING, "waiting for model.json and model.onnx")
            card = json.dumps(make_card("digits", 3, onnx_bytes))
            (filling / "model.json").write_text(card[: len(card) // 2])
            await _until(lambda: state(repository, "digits", 3)[0] == UNAVAILABLE)
            assert repository.get("digits").version == 2  # never served from the half-written directory
            (filling / "model.json").write_text(card)
            await _until(lambda: state(repository, "digits", 3)[0] == READY)
            np.testing.assert_allclose(await repository.get("digits").predict(X), reference_probabilities(X, seed=3), atol=1e-5)

            # A new model appears; a model disappears.
            write_version(tmp_path, "fashion", 1, task="fashion")
            await _until(lambda: "fashion" in repository.names())
            shutil.rmtree(tmp_path / "fashion")
            await _until(lambda: "fashion" not in repository.names())
        finally:
            await repository.stop()

    run(scenario())


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "direct"])
def test_a_request_holding_a_removed_version_finishes_on_it(tmp_path, batching):
    write_version(tmp_path, "digits", 1)
    write_version(tmp_path, "digits", 2)

    async def scenario():
        repository = ModelRepository(make_settings(tmp_path, batching=batching))
        await repository.start()
        try:
            held = repository.get("digits")
            assert held.version == 2
            in_flight = asyncio.create_task(held.predict(X))
            shutil.rmtree(tmp_path / "digits" / "2")
            description = await repository.reload("digits")
            assert [v.version for v in description.versions] == [1] and description.default_version == 1
            np.testing.assert_allclose(await in_flight, reference_probabilities(X, seed=2), atol=1e-5)
            # Even a request that got the version just before the swap and predicts afterwards.
            await asyncio.sleep(0.05)
            np.testing.assert_allclose(await held.predict(X), reference_probabilities(X, seed=2), atol=1e-5)
            assert repository.get("digits").version == 1
        finally:
            await repository.stop()

    run(scenario())


def test_a_replaced_version_directory_is_reloaded(tmp_path):
    write_version(tmp_path, "digits", 1, seed=1)

    metrics = Metrics()

    def provider_gauge() -> float | None:
        return metrics.registry.get_sample_value(
            "pixelserve_model_provider_info", {"model": "digits", "version": "1", "provider": "CPUExecutionProvider"}
        )

    async def scenario():
        repository = ModelRepository(make_settings(tmp_path), metrics)
        await repository.start()
        try:
            shutil.rmtree(tmp_path / "digits" / "1")
            write_version(tmp_path, "digits", 1, seed=7)
            await repository.reload("digits")
            np.testing.assert_allclose(await repository.get("digits").predict(X), reference_probabilities(X, seed=7), atol=1e-5)
            assert provider_gauge() == 1
            shutil.rmtree(tmp_path / "digits" / "1")
            await repository.reload("digits")
            assert provider_gauge() is None
            shutil.rmtree(tmp_path / "digits")
            with pytest.raises(ModelNotFound):
                await repository.reload("digits")
        finally:
            await repository.stop()

    run(scenario())
