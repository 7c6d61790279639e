"""`python -m service [--host H --port P ...]` serves the model repository;
`python -m service predict --model NAME picture.png ...` asks a running server about pictures;
`python -m service import MODEL.onnx --name NAME --labels LABELS.txt ...` adds an ONNX classifier to the repository.
The `pixelserve` console script (`cli`) names the same three: `pixelserve serve ...`, `pixelserve predict ...`,
`pixelserve import ...`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Command-line options that override a setting (the rest come from PIXELSERVE_* environment variables).
SETTING_OPTIONS = {
    "host": "PIXELSERVE_HOST",
    "port": "PIXELSERVE_PORT",
    "model_repository": "PIXELSERVE_MODEL_REPOSITORY",
    "providers": "PIXELSERVE_PROVIDERS",
    "log_level": "PIXELSERVE_LOG_LEVEL",
    "log_format": "PIXELSERVE_LOG_FORMAT",
    "workers": "PIXELSERVE_WORKERS",
}


def serve(args: argparse.Namespace) -> int:
    from service.config import Settings

    # Options become environment variables, so that every worker process reads the same settings.
    for option, variable in SETTING_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            os.environ[variable] = str(value)
    settings = Settings()
    from service.http.uvicorn_compat import http_protocol
    from service.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    uvicorn_options = dict(
        # httptools; hot requests skip uvicorn's request cycle; each response in one socket write; limits on request
        # heads, deadlines, a connection cap (uvicorn's own protocol, with a warning, should its internals differ)
        http=http_protocol(),
        log_config=None,  # the app configures logging (JSON lines with the request id)
        access_log=False,  # the app logs requests itself
        server_header=False,  # no "server: uvicorn" on every response: it names the implementation to any client
        timeout_graceful_shutdown=args.graceful_timeout,  # on SIGTERM: stop accepting, finish requests in flight
    )
    from service.inference.runtime import gpu_serves

    # The GPU libraries are probed only when no worker count is configured.
    workers = settings.worker_count(gpu_serves=settings.workers is None and gpu_serves(settings.providers))
    if workers > 1:
        from service.memory import WORKER_PROCESSES

        os.environ[WORKER_PROCESSES] = str(workers)  # each worker sizes its memory budgets as one of so many
        from service.workers import Backoff, supervise

        return supervise(
            "service.app:create_app", factory=True, host=settings.host, port=settings.port, workers=workers,
            uvicorn_options=uvicorn_options,
            backoff=Backoff(first_s=settings.restart_backoff_s, max_s=max(settings.restart_backoff_s, settings.restart_backoff_max_s)),
        )

    import uvicorn

    from service.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, **uvicorn_options)
    return 0


def predict(args: argparse.Namespace) -> int:
    from service.client import run

    return run(args.url, args.model, args.pictures, top_k=args.top_k, version=args.version, api_key=args.api_key)


def main(argv: list[str] | None = None, prog: str = "python -m service") -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import"]:
        from service.model_import.cli import main as import_main

        return import_main(argv[1:], prog=f"{prog} import")
    if argv[:1] == ["predict"]:
        parser = argparse.ArgumentParser(prog=f"{prog} predict", description="Print the best classes of pictures, asked of a running server.")
        parser.add_argument("pictures", nargs="+", type=Path, help="picture files (PNG, JPEG, GIF, BMP, WebP)")
        parser.add_argument("--model", required=True, help="model name, e.g. mnist-convnet")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="server address (default %(default)s)")
        parser.add_argument("--top-k", type=int, default=3, help="how many classes to print (default %(default)s)")
        parser.add_argument("--version", type=int, help="model version (default: the server's default)")
        parser.add_argument("--api-key", default=os.environ.get("PIXELSERVE_API_KEY"), help="API key (default: $PIXELSERVE_API_KEY)")
        return predict(parser.parse_args(argv[1:]))

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve the model repository over HTTP. Every setting is also read from PIXELSERVE_* environment variables. "
        f"'{prog.removesuffix(' serve')} predict --help' describes the client, "
        f"'{prog.removesuffix(' serve')} import --help' the importer.",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")
    parser.add_argument("--model-repository", type=Path, help="directory holding <name>/<version>/model.onnx")
    parser.add_argument("--providers", help="ONNX Runtime execution providers in order, comma-separated (cuda, cpu)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["json", "text"])
    parser.add_argument("--workers", type=int, help="worker processes, each with its own listening socket on the port (default: one per CPU; one when a GPU serves)")
    parser.add_argument("--graceful-timeout", type=float, default=30.0, help="seconds to finish requests in flight on shutdown")
    return serve(parser.parse_args(argv))


COMMANDS = {
    "serve": "serve the model repository over HTTP (what `python -m service` does)",
    "predict": "print the best classes of pictures, asked of a running server",
    "import": "add an ONNX image classifier to the model repository",
}


def cli(argv: list[str] | None = None) -> int:
    """The `pixelserve` console script: a command name first, then that command's options."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return main(argv[1:], prog="pixelserve serve")
    if argv[:1] in (["predict"], ["import"]):
        return main(argv, prog="pixelserve")
    usage = "usage: pixelserve {serve,predict,import} [options]\n\n" + "".join(
        f"  {name:<9}{text}\n" for name, text in COMMANDS.items()) + "\n'pixelserve COMMAND --help' lists a command's options."
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    print(usage if not argv else f"pixelserve: unknown command {argv[0]!r}\n\n{usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
