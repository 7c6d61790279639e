"""Models at run time: the repository of served versions, their ONNX Runtime sessions, and the batcher."""
