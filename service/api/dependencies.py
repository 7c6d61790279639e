"""What the routers share: the optional API key guard, and tagging a request with the model it used."""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The server's API key, when one is set")
_bearer = HTTPBearer(auto_error=False, description="The server's API key as a bearer token, when one is set")


async def require_api_key(
    request: Request,
    api_key: str | None = Security(_api_key_header),
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> None:
    """Guard for predict, infer and reload endpoints: passes when no key is configured or the right one is sent."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    given = api_key or (bearer.credentials if bearer else None)
    if not given or not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise Unauthorized()


def tag_request(request: Request, model: str, version: int | None = None) -> None:
    """Label this request's metrics with the model (and version) it used."""
    request.state.model = model
    request.state.version = "" if version is None else str(version)
