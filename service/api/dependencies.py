"""What the routers share: the optional API key guard, and tagging a request with the model it used."""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized

# How the key is sent, for the OpenAPI document (components.securitySchemes and each guarded operation).
SECURITY_SCHEMES = {
    "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The server's API key, when one is set"},
    "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "The server's API key as a bearer token, when one is set"},
}
API_KEY_SECURITY = {"security": [{"APIKeyHeader": []}, {"HTTPBearer": []}]}

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description=SECURITY_SCHEMES["APIKeyHeader"]["description"])
_bearer = HTTPBearer(auto_error=False, description=SECURITY_SCHEMES["HTTPBearer"]["description"])


def check_api_key(request: Request, given: str | None = None) -> None:
    """Raise Unauthorized unless no key is configured or the right one is sent (X-API-Key or Bearer).

    A plain call, for hot endpoints: as a FastAPI dependency the same check costs more than the model."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    if given is None:
        given = sent_api_key(request)
    if not given or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise Unauthorized()


def sent_api_key(request: Request) -> str | None:
    """The key the request's headers carry (X-API-Key, or Authorization: Bearer), if any."""
    given = request.headers.get("x-api-key")
    if not given:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    return given or None


async def require_api_key(
    request: Request,
    api_key: str | None = Security(_api_key_header),
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> None:
    """The same guard as a FastAPI dependency: `dependencies=[Depends(require_api_key)]`."""
    check_api_key(request, api_key or (bearer.credentials if bearer else None))


def tag_request(request: Request, model: str, version: int | None = None) -> None:
    """Label this request's metrics with the model (and version) it used (read by the request-context middleware)."""
    state = request.scope.setdefault("state", {})  # what request.state wraps, without building the wrapper
    state["model"] = model
    state["version"] = "" if version is None else str(version)
