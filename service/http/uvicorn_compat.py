"""Which HTTP protocol to serve with: the service's (service/http/protocol.py) while the uvicorn installed has
the internals it builds on, else uvicorn's own httptools protocol, with one warning that names what differs.

service/http/protocol.py subclasses uvicorn's `HttpToolsProtocol`, imports names uvicorn keeps private and
reads attributes that uvicorn sets on its protocol and request cycle. pyproject.toml pins uvicorn to the range
this was tested with; should another uvicorn be installed anyway, this check keeps the service serving
(slower, and without the head limits, deadlines and connection cap of docs/reliability.md) rather than failing
on a request.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("service.http")

MODULE = "uvicorn.protocols.http.httptools_impl"
MODULE_NAMES = ("HEADER_RE", "HEADER_VALUE_RE", "STATUS_LINE", "HttpToolsProtocol", "RequestResponseCycle")
# Methods of HttpToolsProtocol that the service's protocol overrides or calls.
PROTOCOL_METHODS = (
    "connection_made", "connection_lost", "data_received", "on_message_begin", "on_url", "on_header", "on_headers_complete",
    "on_body", "on_message_complete", "on_response_complete", "shutdown", "send_400_response", "handle_websocket_upgrade",
    "_unset_keepalive_if_required", "_should_upgrade", "_unsupported_upgrade_warning",
)
# Attributes it reads, by the uvicorn function that sets them.
ASSIGNED = {
    "HttpToolsProtocol.__init__": ("app", "loop", "logger", "parser", "limit_concurrency", "timeout_keep_alive_task",
                                   "server_state", "connections", "tasks", "pipeline", "cycle", "expect_100_continue"),
    "HttpToolsProtocol.connection_made": ("transport", "flow"),
    "HttpToolsProtocol.on_message_begin": ("url", "headers", "scope"),
    "RequestResponseCycle.__init__": ("response_started", "response_complete", "disconnected", "message_event", "keep_alive"),
}
FLOW_ATTRIBUTES = ("read_paused",)


def missing_internals() -> list[str]:
    """What the service's protocol needs and this uvicorn lacks (empty: nothing)."""
    import importlib

    try:
        module = importlib.import_module(MODULE)
        from uvicorn.protocols.http.flow_control import FlowControl
    except ImportError as error:
        return [f"{MODULE} ({error})"]
    missing = [f"{MODULE}.{name}" for name in MODULE_NAMES if not hasattr(module, name)]
    if missing:
        return missing
    protocol = module.HttpToolsProtocol
    missing += [f"HttpToolsProtocol.{name}" for name in PROTOCOL_METHODS if not callable(getattr(protocol, name, None))]
    for function_name, attributes in ASSIGNED.items():
        owner, _, method = function_name.partition(".")
        function = getattr(getattr(module, owner), method, None)
        assigned = getattr(getattr(function, "__code__", None), "co_names", ())
        missing += [f"{owner}.{attribute} (set in {method})" for attribute in attributes if attribute not in assigned]
    assigned = getattr(getattr(FlowControl.__init__, "__code__", None), "co_names", ())
    missing += [f"FlowControl.{attribute}" for attribute in FLOW_ATTRIBUTES if attribute not in assigned]
    return missing


def http_protocol() -> type | str:
    """The protocol class for uvicorn's `http` option: the service's, or "httptools" (uvicorn's own)."""
    import uvicorn

    missing = missing_internals()
    if not missing:
        try:
            from service.http.protocol import HttpProtocol
        except ImportError as error:
            missing = [str(error)]
        else:
            return HttpProtocol
    logger.warning(
        "uvicorn %s differs from the versions service/http/protocol.py was tested with (pyproject.toml): it lacks %s. "
        "Serving with uvicorn's own httptools protocol instead: slower, and without the limits on request heads, the "
        "deadlines and the connection cap of docs/reliability.md. Install the uvicorn version pyproject.toml names.",
        uvicorn.__version__, ", ".join(missing), extra={"missing": missing},
    )
    return "httptools"
