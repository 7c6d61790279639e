"""A small command-line client: send pictures to a running server, print each one's best classes."""

from __future__ import annotations

import mimetypes
import sys
from pathlib import Path

import httpx


def predict_pictures(
    url: str, model: str, pictures: list[Path], *, top_k: int = 3, version: int | None = None,
    api_key: str | None = None, timeout_s: float = 30.0,
) -> dict:
    """POST the pictures to /v1/models/{model}/predict/image; returns the decoded answer.
    Raises httpx.HTTPStatusError (with the server's error body) or httpx.TransportError."""
    files = [
        ("files", (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream"))
        for path in pictures
    ]
    params = {"top_k": top_k} | ({"version": version} if version is not None else {})
    headers = {"X-API-Key": api_key} if api_key else {}
    response = httpx.post(
        f"{url.rstrip('/')}/v1/models/{model}/predict/image", files=files, params=params, headers=headers, timeout=timeout_s
    )
    response.raise_for_status()
    return response.json()


def format_answer(answer: dict, pictures: list[Path]) -> str:
    lines = []
    for path, prediction in zip(pictures, answer["predictions"]):
        lines.append(f"{path}: {prediction['label']}  ({answer['model']} version {answer['version']})")
        lines += [f"  {top['label']:<12} {top['probability']:.4f}" for top in prediction["top"]]
    return "\n".join(lines)


def run(url: str, model: str, pictures: list[Path], *, top_k: int, version: int | None, api_key: str | None) -> int:
    """The `python -m service predict` command: 0 on success, 1 when the server refused, 2 when unreachable."""
    missing = [str(p) for p in pictures if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        answer = predict_pictures(url, model, pictures, top_k=top_k, version=version, api_key=api_key)
    except httpx.HTTPStatusError as error:
        try:
            detail = error.response.json()["error"]
            message = f"{detail['code']}: {detail['message']}"
        except (ValueError, KeyError, TypeError):
            message = error.response.text
        print(f"error: the server answered {error.response.status_code}: {message}", file=sys.stderr)
        return 1
    except httpx.TransportError as error:
        print(f"error: cannot reach the server at {url}: {error}", file=sys.stderr)
        return 2
    print(format_answer(answer, pictures))
    return 0
