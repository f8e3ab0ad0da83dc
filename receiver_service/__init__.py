"""The receiver gRPC server: own prefill, streaming sharer client, per-layer fusion, generation."""
