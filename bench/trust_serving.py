"""What the typicality output costs the service: requests/s at 64 connections, version 1 of a shipped model
(probabilities only) against a later version with temperature and typicality folded in (`--version`, default
the highest: the one served), side by side.

    python bench/trust_serving.py [--model mnist-convnet] [--version N] [--pairs 3] [--duration 4] [--against REV]

`--against REV` adds a third arm: the same version as it was at git revision REV (its files from git), to measure a
change to the typicality against the fit before it in the same run.

Each pair runs bench/serving.py once on a repository holding only version 1, then once on one holding only
the other version (the service with batching on, v1 JSON and v2 binary, one test picture of the model's
dataset per request), alternating so
that slow spells of a shared machine fall on both. Writes bench/results/trust-serving-MODEL.{json,md}: the median of
each. (The shipped digit models' version 3 is fine-tuned on photos: the same architecture, so the same cost.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SERIES = "service-on:v1-json,service-on:v2-binary"


def run_serving(repository: Path, model: str, out: Path, duration: int) -> dict[str, float]:
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serving.py"), "--repository", str(repository), "--model", model, "--only", SERIES,
         "--connections", "64", "--rounds", "1", "--duration", str(duration), "--out", str(out)],
        check=True, stdout=subprocess.DEVNULL,
    )
    report = json.loads((out / "serving.json").read_text())
    rates = {s["protocol"]: s["points"][0]["requests_per_s"] for s in report["series"]}
    cpu = {f"{s['protocol']} cpu ms/request": s["points"][0]["server_cpu_ms_per_request"] for s in report["series"]}
    return {**rates, **cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-convnet")
    parser.add_argument("--version", type=int, default=None, help="the version with typicality (default: the highest)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--against", default=None, metavar="REV",
                        help="also serve the same version as it was at git revision REV, alternated with the other two")
    args = parser.parse_args()
    trusted = args.version or max(int(p.name) for p in (ROOT / "models" / args.model).iterdir() if p.name.isdigit())
    arms = {"1": "version 1", "now": f"version {trusted}"}
    if args.against:
        arms["before"] = f"version {trusted} at {args.against}"
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="bench-trust-") as scratch:
        for arm in arms:
            target = Path(scratch) / arm / args.model / str(1 if arm == "1" else trusted)
            if arm == "before":
                folder = f"models/{args.model}/{trusted}"
                target.mkdir(parents=True)
                names = subprocess.run(["git", "ls-tree", "--name-only", f"{args.against}:{folder}"], cwd=ROOT, check=True,
                                       capture_output=True, text=True).stdout.split()
                for name in names:
                    (target / name).write_bytes(subprocess.run(["git", "show", f"{args.against}:{folder}/{name}"], cwd=ROOT,
                                                               check=True, capture_output=True).stdout)
            else:
                shutil.copytree(ROOT / "models" / args.model / target.name, target)
        for pair in range(args.pairs):
            for arm in arms:
                rates = run_serving(Path(scratch) / arm, args.model, Path(scratch) / "out", args.duration)
                runs[arm].append(rates)
                print(f"pair {pair + 1} {arms[arm]}: {rates}", flush=True)
    medians = {arm: {p: statistics.median(r[p] for r in rs) for p in rs[0]} for arm, rs in runs.items()}
    ratios = {arm: {p: round(medians[arm][p] / medians["1"][p], 3) for p in medians["1"]} for arm in arms if arm != "1"}
    report = {"model": args.model, "connections": 64, "pairs": args.pairs, "duration_s": args.duration, "version": trusted,
              "against": args.against, "arms": arms, "runs": runs, "median_requests_per_s": medians,
              f"version_{trusted}_over_version_1": ratios["now"],
              **({f"version_{trusted}_at_{args.against}_over_version_1": ratios["before"]} if args.against else {})}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"trust-serving-{args.model}.json").write_text(json.dumps(report, indent=2) + "\n")
    against = f" --against {args.against}" if args.against else ""
    lines = ["# What typicality costs the service", "",
             f"`python bench/trust_serving.py --model {args.model} --version {trusted} --pairs {args.pairs} --duration "
             f"{args.duration}{against}`: requests/s at 64 connections (median of the pairs, batching on, one test picture of the model's dataset per request), "
             f"version 1 (probabilities only) against version {trusted} (temperature folded in, typicality output, "
             "warnings in the answer), alternated on one machine.", "",
             "Server CPU per request (ms) is the servers' CPU time over the requests answered: less sensitive than "
             "requests/s to other work on a shared machine.", "",
             "| measure | " + " | ".join(arms.values()) + " | " + " | ".join(f"ratio, {arms[a]}" for a in ratios) + " |",
             "|---|" + "---|" * (len(arms) + len(ratios))]
    for protocol in medians["1"]:
        lines.append(f"| {protocol} | " + " | ".join(f"{medians[a][protocol]:.3f}" for a in arms) + " | "
                     + " | ".join(f"{ratios[a][protocol]:.3f}" for a in ratios) + " |")
    (RESULTS / f"trust-serving-{args.model}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
