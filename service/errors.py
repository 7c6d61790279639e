"""Every error the service answers with, as exception classes mapped once to HTTP responses.

The v1 surface renders them as {"error": {"code": ..., "message": ...}}, the v2 (Open Inference
Protocol) surface as {"error": "..."}; both keep the status code and headers chosen here.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: an error that is the client's to fix (4xx) or a declared overload (503)."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code
        self.headers = headers or {}


class ModelNotFound(ServiceError):
    status_code = 404
    code = "model_not_found"


class VersionNotFound(ServiceError):
    status_code = 404
    code = "version_not_found"


class ModelNotReady(ServiceError):
    """The model exists but no version of it loaded (broken file, checksum mismatch, ...): 400, not worth retrying
    as is (Triton answers so too); 503 with Retry-After while a version is still loading."""

    status_code = 400
    code = "model_not_ready"


class InvalidInput(ServiceError):
    """Wrong shape, datatype, range, NaN, malformed JSON or multipart body."""

    status_code = 422
    code = "invalid_input"


class InvalidImage(InvalidInput):
    """Bytes that are not a picture we can read (unknown format, truncated, corrupt)."""

    status_code = 415
    code = "invalid_image"


class ImageTooLarge(InvalidInput):
    """A picture whose pixel count exceeds the limit (decompression-bomb guard)."""

    status_code = 413
    code = "image_too_large"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "a valid API key is required (header X-API-Key or Authorization: Bearer)") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class ReloadDisabled(ServiceError):
    """The server was started with reloads over HTTP switched off."""

    status_code = 403
    code = "reload_disabled"

    def __init__(self) -> None:
        super().__init__(
            "reloading models over HTTP is switched off on this server (PIXELSERVE_ALLOW_RELOAD=false); restart it "
            "with PIXELSERVE_ALLOW_RELOAD=true to enable it, or publish a new version directory for the repository "
            "watcher (PIXELSERVE_WATCH_INTERVAL_S) to pick up"
        )


class Overloaded(ServiceError):
    """The model's queue is full: the client should retry after a short wait."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
