"""Serve an ASGI app of this folder from several worker processes, each with its own SO_REUSEPORT
socket, exactly as the service runs its workers (service/workers.py): the ceiling at the service's
worker count, without uvicorn's shared socket, whose connection split can be very uneven.

    python bench/baselines/reuseport.py ceiling:app --workers 2 --port 8001
"""

import argparse
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent)]  # this folder's apps and the service package; workers inherit it

from service.workers import supervise  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app", help="module:attribute of an ASGI app in this folder, e.g. ceiling:app")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.exit(supervise(args.app, factory=False, host=args.host, port=args.port, workers=args.workers,
                       uvicorn_options={"access_log": False, "log_level": "warning"}))
