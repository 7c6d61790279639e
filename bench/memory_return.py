"""How much memory a worker keeps after a burst of large uploads, with and without giving it back.

    .venv/bin/python bench/memory_return.py [--side 4500] [--uploads 4] [--pictures 2] [--rounds 2]

For each setting of PIXELSERVE_RETURN_MEMORY (true: glibc's mmap threshold fixed at 32 MiB, two malloc arenas,
malloc_trim after a burst; false: glibc's defaults), a fresh `python -m service` (one worker, budgets large
enough that every upload decodes at once) gets `--uploads` concurrent uploads of `--pictures` RGB PNGs of
`--side` pixels a side; the worker's RSS is read before, at the peak (sampled every 20 ms) and 2 s after the
burst. Writes bench/results/memory_return.{json,md}. The figures are RSS, on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults.served import digits_repository, serving  # noqa: E402
from tests.faults.test_memory_limit import PeakRss, large_png, rss, upload  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def burst(return_memory: bool, picture: bytes, uploads: int, pictures: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="memory-return-")) / "models"
    env = {"PIXELSERVE_RETURN_MEMORY": str(return_memory).lower(), "PIXELSERVE_DECODE_BUDGET_BYTES": str(8 << 30)}
    with serving(digits_repository(root), env) as server:
        before = rss(server.process.pid)
        with PeakRss(server.process.pid) as peak, ThreadPoolExecutor(uploads) as pool:
            statuses = [r.status_code for r in pool.map(lambda _: upload(server.url, picture, pictures), range(uploads))]
        time.sleep(2)
        after = rss(server.process.pid)
    return {"return_memory": return_memory, "statuses": statuses, "before_mib": before / 2**20,
            "peak_mib": peak.peak / 2**20, "after_mib": after / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4500)
    parser.add_argument("--uploads", type=int, default=4)
    parser.add_argument("--pictures", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    picture = large_png(args.side)
    runs = [burst(setting, picture, args.uploads, args.pictures) for _ in range(args.rounds) for setting in (False, True)]
    for run in runs:
        print(json.dumps(run), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory_return.json").write_text(json.dumps({"args": vars(args), "machine": platform.platform(), "runs": runs}, indent=2) + "\n")
    lines = [
        f"# Memory kept after a burst ({args.uploads} concurrent uploads of {args.pictures} RGB PNGs of {args.side}x{args.side})",
        "", "Worker RSS in MiB (one worker; `bench/memory_return.py`; a shared, loaded machine).", "",
        "| PIXELSERVE_RETURN_MEMORY | before | peak | 2 s after |", "|---|---|---|---|",
    ]
    lines += [f"| {str(r['return_memory']).lower()} | {r['before_mib']:.0f} | {r['peak_mib']:.0f} | {r['after_mib']:.0f} |" for r in runs]
    (RESULTS / "memory_return.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
