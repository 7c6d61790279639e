"""The lean HTTP path: the service's uvicorn protocol, the hot endpoints it answers directly, and the JSON and
Open Inference Protocol tensor codecs they read and write."""
