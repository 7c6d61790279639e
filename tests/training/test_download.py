"""The downloader against a local HTTP server started here (never the internet)."""

import dataclasses
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from tests.training.synthetic_data import idx_bytes, synthetic_images

from training import data
from training.__main__ import main
from training.download import DownloadError, download_verified

PAYLOAD = b"pixelserve test payload " * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 - http.server's naming
        name = self.path.rsplit("/", 1)[-1]
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/truncated/"):
            self.wfile.write(body[: len(body) // 2])  # then the connection closes early
        else:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.files = {"payload.bin": PAYLOAD}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_writes_the_verified_file(server, tmp_path):
    target = download_verified([f"{server}/good/payload.bin"], tmp_path / "payload.bin", PAYLOAD_SHA)
    assert target.read_bytes() == PAYLOAD
    assert [p.name for p in tmp_path.iterdir()] == ["payload.bin"]


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    with pytest.raises(DownloadError, match=f"does not match the expected {'0' * 64}"):
        download_verified([f"{server}/good/payload.bin"], tmp_path / "payload.bin", "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_truncated_transfer_leaves_no_file(server, tmp_path):
    with pytest.raises(DownloadError, match="payload.bin"):
        download_verified([f"{server}/truncated/payload.bin"], tmp_path / "payload.bin", PAYLOAD_SHA)
    assert list(tmp_path.iterdir()) == []


def test_falls_back_to_the_next_mirror(server, tmp_path):
    urls = [f"{server}/good/missing.bin", f"{server}/truncated/payload.bin", f"{server}/good/payload.bin"]
    target = download_verified(urls, tmp_path / "payload.bin", PAYLOAD_SHA)
    assert target.read_bytes() == PAYLOAD


def test_unreachable_mirror_is_reported(tmp_path):
    with pytest.raises(DownloadError, match="could not download payload.bin"):
        download_verified(["http://127.0.0.1:1/payload.bin"], tmp_path / "payload.bin", PAYLOAD_SHA, timeout=5)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def local_mnist(server, monkeypatch):
    """MNIST's spec pointed at the local server only, with checksums of synthetic files it serves."""
    train_x, train_y = synthetic_images(1000, seed=5)
    test_x, test_y = synthetic_images(600, seed=6)
    files = {
        data.TRAIN_IMAGES: idx_bytes(train_x), data.TRAIN_LABELS: idx_bytes(train_y),
        data.TEST_IMAGES: idx_bytes(test_x), data.TEST_LABELS: idx_bytes(test_y),
    }
    Handler.files = files
    sums = {name: hashlib.sha256(body).hexdigest() for name, body in files.items()}
    spec = dataclasses.replace(data.DATASETS["mnist"], sha256=sums, mirrors=(f"{server}/good",))
    monkeypatch.setitem(data.DATASETS, "mnist", spec)
    return files


def test_load_splits_downloads_then_uses_the_official_split(local_mnist, tmp_path):
    splits = data.load_splits("mnist", tmp_path / "mnist", download=True)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(local_mnist)
    assert splits.test_split == "mnist official test set (600 images)"
    assert len(splits.train_labels) + len(splits.val_labels) == 1000
    np.testing.assert_array_equal(splits.test_images[0], synthetic_images(600, seed=6)[0][0])


def test_download_command_refuses_a_tampered_file(local_mnist, tmp_path, capsys):
    Handler.files = {**local_mnist, data.TEST_LABELS: b"tampered"}
    code = main(["download", "--dataset", "mnist", "--data-dir", str(tmp_path)])
    assert code == 2
    assert "t10k-labels-idx1-ubyte.gz" in capsys.readouterr().err
    # The three good files are kept, the tampered one never appears, nothing half-written remains.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(local_mnist) - {data.TEST_LABELS})
