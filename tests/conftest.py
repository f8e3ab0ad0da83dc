"""Shared fixtures: the tiny model pair, built once per test session in a temporary directory."""

from __future__ import annotations

import pytest

from c2c.model_loading import LoadedModel, load_causal_lm
from tests.tiny_models import TinyPair, build_tiny_models


@pytest.fixture(scope="session")
def tiny_pair_dirs(tmp_path_factory: pytest.TempPathFactory) -> TinyPair:
    """Directories of the tiny receiver (Qwen3) and sharers (Llama, Qwen2)."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_receiver(tiny_pair_dirs: TinyPair) -> LoadedModel:
    return load_causal_lm(tiny_pair_dirs.receiver)


@pytest.fixture(scope="session")
def tiny_llama_sharer(tiny_pair_dirs: TinyPair) -> LoadedModel:
    return load_causal_lm(tiny_pair_dirs.llama_sharer)


@pytest.fixture(scope="session")
def tiny_qwen2_sharer(tiny_pair_dirs: TinyPair) -> LoadedModel:
    return load_causal_lm(tiny_pair_dirs.qwen2_sharer)
