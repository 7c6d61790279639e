"""Checksummed, atomic downloads: a file appears under its final name only once its sha256 matches."""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """No mirror delivered the file with the expected checksum."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_to(url: str, handle, timeout: float) -> str:
    """Stream url into an open file; return the sha256 of what was received."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        declared = response.headers.get("Content-Length")
        received = 0
        for chunk in iter(lambda: response.read(CHUNK), b""):
            digest.update(chunk)
            handle.write(chunk)
            received += len(chunk)
    if declared is not None and received != int(declared):
        raise DownloadError(f"{url}: connection closed after {received} of {declared} bytes")
    return digest.hexdigest()


def download_verified(
    urls: Sequence[str], destination: str | Path, sha256: str, *, timeout: float = 60.0
) -> Path:
    """Download the first mirror in `urls` whose content has `sha256`, to `destination`.

    Each attempt writes to a hidden temporary file beside the destination and renames it into
    place only after the checksum matches, so a failure or mismatch never leaves a partial file.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        fd, temp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                actual = _fetch_to(url, handle, timeout)
                handle.flush()
                os.fsync(handle.fileno())
            if actual != sha256:
                failures.append(f"{url}: sha256 {actual} does not match the expected {sha256}")
                continue
            os.replace(temp_name, destination)
            return destination
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError, DownloadError) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            if os.path.exists(temp_name):
                os.unlink(temp_name)
    raise DownloadError(f"could not download {destination.name}:\n  " + "\n  ".join(failures))
