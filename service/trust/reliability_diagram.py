"""The reliability diagram of a calibration (accuracy against confidence per bin, before and after temperature
scaling) drawn with Pillow: the importer runs on the serving side, which has no matplotlib."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

SIDE = 400  # pixels; the plot square is SIDE - 2 * MARGIN
MARGIN = 48
STYLES = {"before": ((200, 90, 40), "before temperature scaling"), "after": ((30, 90, 200), "after temperature scaling")}


def reliability_png(reliability: dict, title: str = "") -> bytes:
    """PNG bytes: the diagonal (perfect calibration), and each of `reliability`'s "before" / "after" bin lists
    (service.trust.calibration.reliability) as a line through its non-empty bins, a dot a bin."""
    image = Image.new("RGB", (SIDE, SIDE), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    inner = SIDE - 2 * MARGIN

    def at(confidence: float, accuracy: float) -> tuple[float, float]:
        return MARGIN + confidence * inner, SIDE - MARGIN - accuracy * inner

    draw.rectangle((MARGIN, MARGIN, SIDE - MARGIN, SIDE - MARGIN), outline="black")
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, y = at(tick, tick)
        draw.line((x, SIDE - MARGIN, x, SIDE - MARGIN + 4), fill="black")
        draw.line((MARGIN - 4, y, MARGIN, y), fill="black")
        draw.text((x - 8, SIDE - MARGIN + 6), f"{tick:g}", fill="black", font=font)
        draw.text((MARGIN - 28, y - 6), f"{tick:g}", fill="black", font=font)
    draw.line((*at(0, 0), *at(1, 1)), fill=(150, 150, 150), width=1)
    legend_y = MARGIN + 6
    for key, (colour, label) in STYLES.items():
        points = [at(b["confidence"], b["accuracy"]) for b in reliability.get(key, []) if b["count"]]
        if not points:
            continue
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        draw.line((MARGIN + 8, legend_y + 6, MARGIN + 24, legend_y + 6), fill=colour, width=2)
        draw.text((MARGIN + 30, legend_y), label, fill="black", font=font)
        legend_y += 14
    draw.text((MARGIN, 14), f"{title} reliability ({len(reliability.get('after', []))} bins)".strip(), fill="black", font=font)
    draw.text((SIDE // 2 - 70, SIDE - 18), "confidence (top probability)", fill="black", font=font)
    draw.text((4, MARGIN - 18), "accuracy", fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
