"""How far an answer can be trusted: calibrated probabilities, a typicality score, warnings, explanations.

Serving uses `warnings` and `explain` (numpy only). Fitting (`fit`, `graph`) needs the `onnx` package and
runs only where it is installed: at training time, in the importer, or by hand (`python -m service.trust`).
"""
