"""What the card's trust sections say about one answer: its typicality and its warnings. numpy only (serving)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OUT_OF_DISTRIBUTION, LOW_CONFIDENCE = "out_of_distribution", "low_confidence"


@dataclass(frozen=True)
class TrustPolicy:
    """Read from a card; a card without the sections gives no threshold (typicality null, no OOD warning) and no
    margin (no low-confidence warning)."""

    typicality_output: str | None = None
    threshold: float | None = None
    margin: float | None = None

    @classmethod
    def from_card(cls, card: dict) -> TrustPolicy:
        typicality = card.get("typicality") if isinstance(card.get("typicality"), dict) else {}
        calibration = card.get("calibration") if isinstance(card.get("calibration"), dict) else {}
        output, threshold = typicality.get("output"), typicality.get("threshold")
        margin = calibration.get("low_confidence_margin")
        return cls(
            typicality_output=output if isinstance(output, str) else None,
            threshold=float(threshold) if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) else None,
            margin=float(margin) if isinstance(margin, (int, float)) and not isinstance(margin, bool) else None,
        )

    def warnings(self, row: list[float], order: list[int], classes: list[str], typicality: float | None) -> list[dict]:
        """The warnings for one answer; `order` lists at least the two best classes first."""
        found = []
        if typicality is not None and self.threshold is not None and typicality < self.threshold:
            found.append({
                "code": OUT_OF_DISTRIBUTION,
                "message": (
                    f"this picture does not look like what the model was trained on (typicality {typicality:.2f}, "
                    f"below {self.threshold:.2f}); its answer may be meaningless"
                ),
            })
        if self.margin is not None and len(order) >= 2 and row[order[0]] - row[order[1]] < self.margin:
            first, second = classes[order[0]], classes[order[1]]
            found.append({
                "code": LOW_CONFIDENCE,
                "message": (
                    f"the model hesitates between {first!r} ({row[order[0]]:.0%}) and {second!r} ({row[order[1]]:.0%})"
                ),
            })
        return found


def typicality_values(typicality: np.ndarray | None, count: int) -> list[float | None]:
    # tolist() makes the same Python floats as float() of each value, in one call (this runs per request).
    return [None] * count if typicality is None else np.asarray(typicality).tolist()


def trust_parameters(probabilities: np.ndarray, typicality: np.ndarray | None, classes: list[str], trust: TrustPolicy) -> dict:
    """The v2 response parameters: {"typicality": [one per picture, or null], "warnings": [[...] per picture]}."""
    scores = typicality_values(typicality, len(probabilities))
    if trust.threshold is None and trust.margin is None:
        return {"typicality": scores, "warnings": [[] for _ in scores]}
    indices = range(probabilities.shape[1])
    warnings = []
    for row, score in zip(probabilities.tolist(), scores):
        # Python's stable sort on one short row: a third of numpy's argsort and the calls around it, per request.
        best_two = sorted(indices, key=row.__getitem__, reverse=True)[:2]
        warnings.append(trust.warnings(row, best_two, classes, score))
    return {"typicality": scores, "warnings": warnings}
