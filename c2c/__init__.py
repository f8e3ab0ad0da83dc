"""Code shared by the sharer and receiver services: KV codec, model loading, telemetry, the CLI."""

__version__ = "0.1.0"
