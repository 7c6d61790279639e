"""Which typicality member catches what, for one served model: each candidate member alone, the fits tried, and the
served fit without each of its members, fitted on the training split, standardised on the validation split, the
threshold held as fit_trust holds it (at most 5% of the test pictures flagged, raw and sent as PNG uploads).
Flagged: the model's own test pictures (raw, uploaded), the other dataset's test pictures (raw, uploaded: the first
1,000, as bench/trust.py; and its pictures 1,200-1,600 uploaded, as tests/trust/test_ood_goals.py) and
training/photo_eval.py's fixed photos of the model's own classes.

    python -m bench.trust_members [--model fashion-mlp] [--count 1000]

Writes bench/results/<model>/members.md. The served fit is also fitted on synthetic photos (training/trust.py's
served_pictures); here every candidate is fitted on the dataset alone, so the figures compare members, not fits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx

from bench.ood_sets import as_uploaded
from bench.trust import OTHER, latest_version, photo_inputs
from service.trust import typicality as typ
from service.trust.fit import run_outputs
from service.trust.graph import INPUT_VIEW, PICTURE_STATISTICS, anatomy, strip_trust, view_shape, with_fitting_outputs
from training.data import load_splits
from training.trust import model_inputs, uploads_as_served

RESULTS = Path(__file__).parent / "results"


def features(model_dir: Path, count: int) -> tuple[dict, list[str], tuple]:
    card = json.loads((model_dir / "model.json").read_text())
    proto = strip_trust(onnx.load(model_dir / card["onnx"]["file"]))
    parts = anatomy(proto, card["output"]["name"])
    probe, names = with_fitting_outputs(proto, parts)
    dataset, method = card["training"]["dataset"], card["preprocessing"]["method"]
    own, other = load_splits(dataset, seed=card["training"].get("seed", 0)), load_splits(OTHER[dataset])
    other_x = model_inputs(other.test_images[:count])
    sliced = model_inputs(other.test_images[1200:1600])  # the slice tests/trust/test_ood_goals.py uploads
    sets = {"train": model_inputs(own.train_images), "val": model_inputs(own.val_images), "test": model_inputs(own.test_images),
            "test_up": uploads_as_served(own.test_images, method), "other": other_x, "other_up": as_uploaded(other_x, method)[0],
            "slice_up": as_uploaded(sliced, method)[0],
            "photos": photo_inputs(dataset, method)[0]}
    out = {"labels": own.train_labels}
    for name, x in sets.items():
        values = run_outputs(probe, x, names)
        out[name] = {"logits": values[0], **{tensor: v for (tensor, _), v in zip(parts.features, values[1:])}}
    layers = [t for t, _ in parts.features if t not in (INPUT_VIEW, PICTURE_STATISTICS)]
    return out, layers, view_shape(proto, parts)


def candidates(f: dict, layers: list[str], shape: tuple) -> dict[str, dict]:
    """name -> {set: raw score} (higher = more typical), each fitted on the training split."""
    sets = [s for s in f if s != "labels"]
    on = lambda fit, tensor, method="score": {s: getattr(fit, method)(f[s][tensor]) for s in sets}  # noqa: E731
    members = {"energy": {s: typ.energy(f[s]["logits"]) for s in sets},
               "extent": {s: typ.extent(f[s][INPUT_VIEW], shape) for s in sets}}
    for k in (64, 128):
        subspace = typ.fit_subspace(f["train"][INPUT_VIEW], k, within=True)
        members[f"pca-residual {k}"] = on(subspace, INPUT_VIEW)
        members[f"pca-within {k}"] = on(subspace, INPUT_VIEW, "within_score")
    members["picture-statistics"] = on(typ.fit_gaussians(f["train"][PICTURE_STATISTICS], f["labels"], 10), PICTURE_STATISTICS)
    for i, layer in enumerate(layers):
        label = "penultimate" if i == len(layers) - 1 else f"layer {i + 1}"
        members[f"mahalanobis {layer} ({label})"] = on(typ.fit_gaussians(f["train"][layer], f["labels"], 10), layer)
    members[f"mahalanobis {layers[-1]}, 64 directions"] = on(typ.fit_gaussians(f["train"][layers[-1]], f["labels"], 10, 64), layers[-1])
    return members


def flagged(members: list[dict]) -> dict[str, float]:
    standard = []
    for scores in members:
        offset, scale = typ.standardisation(scores["val"])
        standard.append({s: (v - offset) / scale for s, v in scores.items()})
    score = {s: np.min([m[s] for m in standard], axis=0) for s in standard[0]}
    threshold = min(typ.threshold_for(score["test"], 0.05), typ.threshold_for(score["test_up"], 0.05))
    return {s: float((v < threshold).mean()) for s, v in score.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-mlp")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    f, layers, shape = features(latest_version(args.models_dir, args.model), args.count)
    members = candidates(f, layers, shape)
    penultimate = f"mahalanobis {layers[-1]}, 64 directions"
    served = ["pca-residual 128", "pca-within 128", penultimate, "extent"]
    fits = {**{name: [name] for name in members},
            "pca-residual 64 + energy (the earlier fit's members)": ["pca-residual 64", "energy"],
            "pca-residual 64 + picture-statistics + energy (fit_trust's default)": ["pca-residual 64", "picture-statistics", "energy"],
            "pca-residual 64 + pca-within 64 + energy": ["pca-residual 64", "pca-within 64", "energy"],
            "served: " + " + ".join(served): served,
            **{f"served without {m}": [n for n in served if n != m] for m in served},
            "served + energy": [*served, "energy"], "served + picture-statistics": [*served, "picture-statistics"]}
    command = f"python -m bench.trust_members --model {args.model} --count {args.count}"
    lines = [f"# Which typicality member catches what: {args.model}", "",
             f"Written by `{command}`. Each fit on the training split alone, standardised on the validation split, its",
             "threshold held at 5% of the test pictures raw and uploaded; flagged shares. other: the other dataset's test",
             "pictures (the first 1,000; slice: 1,200-1,600, uploaded); photos: training/photo_eval.py's fixed photos of the",
             "model's own classes.", "",
             "| members | own raw | own uploaded | other raw | other uploaded | other slice uploaded | photos |", "|---|---|---|---|---|---|---|"]
    for name, chosen in fits.items():
        r = flagged([members[m] for m in chosen])
        lines.append(f"| {name} | {r['test']:.1%} | {r['test_up']:.1%} | {r['other']:.1%} | {r['other_up']:.1%} | {r['slice_up']:.1%} | {r['photos']:.1%} |")
    out = RESULTS / args.model
    out.mkdir(parents=True, exist_ok=True)
    (out / "members.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
