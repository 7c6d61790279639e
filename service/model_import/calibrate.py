"""An imported model's trust sections, fitted on `--calibration-data FOLDER` as `python -m training calibrate`
fits the shipped models' (service.trust.fit.fit_trust): the temperature folded into the graph, the typicality
output added, and the card's `calibration` and `typicality` sections that serving reads for its warnings."""

from __future__ import annotations

from pathlib import Path

from service.inference.card import parse_card
from service.model_import.calibration_data import CalibrationDataError, read_calibration_data


def calibrate(model, card: dict, folder: Path, *, max_pixels: int):
    """(the graph to serve, the card with its trust sections, the reliability bins before and after scaling);
    CalibrationDataError when the folder or the fit fails, so that nothing is published."""
    from service.trust.fit import fit_trust, with_trust

    data = read_calibration_data(folder, parse_card(card), max_pixels=max_pixels)
    train = data.train
    try:
        fit = fit_trust(
            model,
            output=card["output"]["name"],
            kind=card["output"]["kind"],
            validation_inputs=data.validation.inputs, validation_labels=data.validation.labels,
            train_inputs=train.inputs if train else None, train_labels=train.labels if train else None,
            test_inputs=data.test.inputs, test_labels=data.test.labels,
            splits=data.splits(),
        )
    except Exception as error:  # graph surgery, ONNX Runtime and the fits raise many types; any of them refuses
        raise CalibrationDataError(f"fitting the calibration on {folder} failed: {error.__class__.__name__}: {error}") from None
    card = with_trust(card, fit)
    card["calibration"] = {**card["calibration"], "pictures_per_label": data.per_class,
                           "data_layout": "train/val/test folders" if data.layout == "splits" else "one folder per label"}
    return fit.model, card, fit.reliability
