"""An imported model's first run: a synthetic photo through the server's own decoding, preprocessing, input
checks and runtime, before anything is published."""

from __future__ import annotations

import io

import numpy as np

from service.inference.card import check_graph, fixed_batch, parse_card


class TrialFailed(Exception):
    """The model did not answer probabilities on the synthetic photo; the message says what it did."""


def synthetic_photo(width: int = 640, height: int = 480) -> bytes:
    """A JPEG photo-like picture (gradients and a disc), made here: the model's first run needs no download."""
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels)
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(200, 40, 60))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def try_on_a_photo(model_bytes: bytes, card: dict) -> np.ndarray:
    """Run the model on a synthetic photo (twice in one batch) through the server's own preprocessing, input checks
    and runtime; it must answer one probability per label, summing to 1."""
    import onnxruntime as ort

    from service.imaging import picture_pixels
    from service.inference import runtime
    from service.inference.model_input import ModelInput

    spec = parse_card(card)
    try:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise TrialFailed(f"ONNX Runtime cannot load the model: {error}") from None
    check_graph(session.get_inputs(), session.get_outputs(), spec)
    model_input = ModelInput(spec.input)
    pixels, full_scale = picture_pixels(synthetic_photo(), spec, max_pixels=10_000_000)
    batch = model_input.from_pixels(np.stack([pixels, pixels]), full_scale)
    infer = runtime.make_infer_fn(session, spec.input.name, spec.output.name, logits=spec.output.kind == "logits",
                                  fixed_batch=fixed_batch(session.get_inputs()))
    try:
        probabilities = np.asarray(infer(batch), dtype=np.float64)
    except Exception as error:
        raise TrialFailed(f"the model failed on a {'x'.join(map(str, batch.shape))} {batch.dtype} batch made as the card says: {error}") from None
    if probabilities.shape != (2, len(spec.classes)):
        raise TrialFailed(f"the model answered shape {list(probabilities.shape)} for 2 pictures; [2, {len(spec.classes)}] was expected")
    if not np.isfinite(probabilities).all() or np.abs(probabilities.sum(axis=1) - 1).max() > 1e-3 or probabilities.min() < 0:
        raise TrialFailed(
            "the model's answers are not probabilities (they do not sum to 1): it answers logits; "
            "pass --output-kind logits so that a Softmax is appended"
        )
    return probabilities
