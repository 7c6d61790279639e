"""The serving benchmark's results as a Markdown table, a plot, and the targets each run is held to."""

from __future__ import annotations

from pathlib import Path

from serving_photos import floor_lines

PROTOCOL_NAMES = {"v1-json": "v1 JSON", "v2-json": "v2 JSON", "v2-binary": "v2 binary", "upload": "JPEG upload"}


def _point(report: dict, server: str, protocol: str, connections: int) -> dict | None:
    for series in report["series"]:
        if series["server"] == server and series["protocol"] == protocol:
            return next((p for p in series["points"] if p["connections"] == connections), None)
    return None


def _target(description: str, measured: float | None, limit: float, *, at_most: bool = False, unit: str = "") -> dict:
    if measured is None:
        return {"target": description, "measured": None, "met": None}
    met = measured <= limit if at_most else measured >= limit
    return {"target": description, "measured": round(measured, 3), "limit": limit, "unit": unit, "met": met}


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    return a[key] / b[key] if a and b and b[key] else None


def check_targets(report: dict) -> list[dict]:
    """The targets for the service's defaults (batching on), as ratios within this one run."""
    v1 = {c: _point(report, "service-on", "v1-json", c) for c in (1, 64)}
    v2_binary = _point(report, "service-on", "v2-binary", 64)
    naive_ort = _point(report, "naive-ort", "v1-json", 64)
    naive_torch = _point(report, "naive-torch", "v1-json", 64)
    ceiling = {c: _point(report, "ceiling", "v1-json", c) for c in (1, 64)}
    ceiling_workers = _point(report, "ceiling-workers", "v1-json", 64)
    return [
        _target("v1 JSON req/s at 64 connections >= 3x naive FastAPI + ONNX Runtime", _ratio(v1[64], naive_ort, "requests_per_s"), 3.0, unit="x"),
        _target("v1 JSON req/s at 64 connections >= 5x naive FastAPI + PyTorch", _ratio(v1[64], naive_torch, "requests_per_s"), 5.0, unit="x"),
        _target("v1 JSON req/s at 64 connections >= 60% of the ceiling (one process)", _ratio(v1[64], ceiling[64], "requests_per_s"), 0.6, unit="x"),
        _target("v1 JSON req/s at 64 connections >= 60% of the ceiling run with the service's workers",
                _ratio(v1[64], ceiling_workers, "requests_per_s"), 0.6, unit="x"),
        _target("v1 JSON p99 at 64 connections <= 15 ms", v1[64]["p99_ms"] if v1[64] else None, 15.0, at_most=True, unit="ms"),
        _target("v1 JSON p50 at 1 connection <= 1.5x the ceiling's", _ratio(v1[1], ceiling[1], "p50_ms"), 1.5, at_most=True, unit="x"),
        _target("v2 binary req/s at 64 connections >= v1 JSON's", _ratio(v2_binary, v1[64], "requests_per_s"), 1.0, unit="x"),
    ]


def one_connection_floor(report: dict) -> str | None:
    """How the 1-connection p50 target compares with the floor: the minimal per-request server's p50."""
    service, minimal, ceiling = (_point(report, server, "v1-json", 1) for server in ("service-on", "minimal-ort", "ceiling"))
    if not (service and minimal and ceiling):
        return None
    return (f"At 1 connection the minimal per-request server (the ceiling plus one ONNX Runtime run, nothing else) "
            f"answers at p50 {minimal['p50_ms']:.2f} ms, {_ratio(minimal, ceiling, 'p50_ms'):.2f}x the ceiling's "
            f"{ceiling['p50_ms']:.2f} ms; the service at {service['p50_ms']:.2f} ms, {_ratio(service, ceiling, 'p50_ms'):.2f}x.")


def _label(series: dict) -> str:
    if series["server"].startswith("service"):
        return f"{series['label']}, {PROTOCOL_NAMES[series['protocol']]}"
    return series["label"]


def write_markdown(report: dict) -> str:
    connections = report["connections"]
    machine = report["machine"]
    lines = [
        f"Model `{report['model']['name']}` version {report['model']['version']}; {report['request']}; "
        f"{report['duration_s']:g} s per point after {report['warmup_s']:g} s of warm-up; "
        f"each figure the median of {report.get('rounds', 1)} rounds, every server started anew each round.",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}, Python {machine['python']}, {machine['wrk']}; "
        f"load average before {machine['load_average_before'][0]}, after {machine['load_average_after'][0]}.",
        f"Command: `{report['command']}` ({report['wall_time_s']:.0f} s).",
        "",
        "| server | workers | " + " | ".join(f"{c} conn: req/s | p50 ms | p99 ms" for c in connections)
        + f" | server CPU ms/request at {connections[-1]} conn |",
        "|---|---:|" + "---:|---:|---:|" * len(connections) + "---:|",
    ]
    for series in report["series"]:
        cells = []
        for count in connections:
            point = next((p for p in series["points"] if p["connections"] == count), None)
            if point is None:
                cells += ["", "", ""]
                continue
            flag = " (errors)" if point["errors"] else ""
            cells += [f"{point['requests_per_s']:,.0f}{flag}", f"{point['p50_ms']:.2f}", f"{point['p99_ms']:.2f}"]
        last = next((p for p in series["points"] if p["connections"] == connections[-1]), None)
        cells.append(f"{last['server_cpu_ms_per_request']:.3f}" if last else "")
        lines.append(f"| {_label(series)} | {series['workers']} | " + " | ".join(cells) + " |")
    if report["targets"]:  # none where requests carry several images
        lines += ["", "| target | measured | met |", "|---|---:|:---:|"]
    for target in report["targets"]:
        if target["measured"] is None:
            lines.append(f"| {target['target']} | not measured | |")
        else:
            value = f"{target['measured']:.2f} {target['unit']}".strip()
            lines.append(f"| {target['target']} | {value} | {'yes' if target['met'] else 'no'} |")
    floor = one_connection_floor(report)
    if floor:
        lines += ["", floor]
    lines += floor_lines(report)
    return "\n".join(lines) + "\n"


def write_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    connections = report["connections"]
    labels = [_label(s) for s in report["series"]]
    fig, axes = plt.subplots(1, len(connections), figsize=(5 * len(connections), 0.45 * len(labels) + 1.8), sharey=True)
    axes = [axes] if len(connections) == 1 else list(axes)
    for axis, count in zip(axes, connections):
        points = [next((p for p in s["points"] if p["connections"] == count), None) for s in report["series"]]
        rates = [p["requests_per_s"] if p else 0 for p in points]
        colors = ["tab:blue" if s["server"] == "service-on" else "tab:cyan" if s["server"] == "service-off"
                  else "tab:gray" if s["server"].startswith("ceiling") else "tab:olive" if s["server"] == "minimal-ort"
                  else "tab:red" for s in report["series"]]
        bars = axis.barh(range(len(labels)), rates, color=colors)
        for bar, point in zip(bars, points):
            if point:
                axis.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                          f" {point['requests_per_s']:,.0f}  (p50 {point['p50_ms']:.2f} / p99 {point['p99_ms']:.1f} ms)",
                          va="center", fontsize=7)
        axis.set_title(f"{count} connection{'s' if count > 1 else ''}")
        axis.set_xlabel("requests / s")
        axis.set_xlim(0, max(rates + [1]) * 1.6)
    axes[0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{report['model']['name']} over HTTP on {report['machine']['cores']} cores ({report['machine']['cpu']}), wrk -t1", fontsize=10)
    fig.tight_layout()
    temp = path.with_name(path.name + ".tmp")
    fig.savefig(temp, dpi=110, format="png")
    plt.close(fig)
    temp.replace(path)
