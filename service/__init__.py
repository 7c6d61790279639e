"""pixelserve: serve ONNX image classifiers' softmax probabilities over HTTP with ONNX Runtime."""

__version__ = "0.1.0"
