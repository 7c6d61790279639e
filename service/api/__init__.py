"""HTTP surfaces, one router per module: v1 REST, v2 Open Inference Protocol, web page, health, metrics."""
