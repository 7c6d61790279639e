"""Prometheus metrics in the text exposition format: this process's, or with several worker processes, all of theirs added up."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from service.observability import MULTIPROCESS

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    if MULTIPROCESS:
        # Every worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR; a registry made for this scrape
        # reads them all (prometheus_client's multiprocess mode).
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
