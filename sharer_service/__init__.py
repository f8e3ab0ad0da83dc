"""The sharer gRPC server: model loading, prefill, token alignment, KV streaming."""
