"""Training side of pixelserve: datasets, classifiers, the training loop, ONNX export and model cards.

The service never imports this package; the two meet only in the model repository on disk."""
