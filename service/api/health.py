"""Liveness and readiness, at the Open Inference Protocol paths (and /healthz for plain probes).

Each also answers HEAD (the same status, no body), for load balancers that probe with it; the HEAD
routes stay out of the OpenAPI document, which would otherwise list every probe twice."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

router = APIRouter(tags=["health"])


def _json(content: dict, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


@router.get("/v2/health/live", summary="The process is up and answering")
@router.head("/v2/health/live", include_in_schema=False)
async def live() -> Response:
    return _json({"live": True})


@router.get("/healthz", summary="The process is up and answering (same as /v2/health/live)")
@router.head("/healthz", include_in_schema=False)
async def healthz() -> Response:
    return _json({"live": True})


@router.get(
    "/v2/health/ready",
    summary="Ready to serve: the repository was scanned and at least one model has a version ready (503 otherwise)",
    responses={503: {"description": "Not ready yet, or no model could be loaded"}},
)
@router.head("/v2/health/ready", include_in_schema=False)
async def ready(request: Request) -> Response:
    repository = request.app.state.repository
    if not repository.started:
        return _json({"ready": False, "reason": "the model repository is still loading"}, 503)
    states = {name: repository.describe(name).state for name in repository.names()}
    if "READY" not in states.values():
        return _json({"ready": False, "reason": "no model has a version ready to serve", "models": states}, 503)
    return _json({"ready": True, "models": states})
