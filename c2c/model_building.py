"""Build random-initialized (seeded) causal LMs of a supported family from their sizes.

Used by the tests (tiny pairs built in seconds), by the fuser benchmark (real shapes, random
weights) and by the bundled-pair builder (which then trains them). The result is an ordinary
Hugging Face model directory: config.json, model.safetensors and the tokenizer beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3Config,
)

FAMILIES = ("qwen3", "llama", "qwen2")


@dataclass(frozen=True)
class ModelSizes:
    """Shape of a decoder-only model; vocabulary size comes from the tokenizer."""

    family: str  # "qwen3", "llama" or "qwen2"
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True


def make_config(
    sizes: ModelSizes, vocab_size: int, special_ids: dict[str, int | None] | None = None
) -> PretrainedConfig:
    """The Hugging Face config for these sizes; special_ids: eos/pad/bos_token_id."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads,
        num_key_value_heads=sizes.num_kv_heads,
        max_position_embeddings=sizes.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": sizes.rope_theta},
        tie_word_embeddings=sizes.tie_word_embeddings,
        **(special_ids or {}),
    )
    if sizes.family == "qwen3":
        return Qwen3Config(head_dim=sizes.head_dim, architectures=["Qwen3ForCausalLM"], **common)
    if sizes.family == "llama":
        return LlamaConfig(head_dim=sizes.head_dim, architectures=["LlamaForCausalLM"], **common)
    if sizes.family == "qwen2":
        if sizes.hidden_size != sizes.num_heads * sizes.head_dim:
            raise ValueError("qwen2 derives head_dim from hidden_size / num_heads; sizes disagree")
        return Qwen2Config(architectures=["Qwen2ForCausalLM"], **common)
    raise ValueError(f"unknown model family {sizes.family!r}; expected one of {FAMILIES}")


def build_causal_lm(
    sizes: ModelSizes,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    seed: int = 0,
    std: float = 0.02,
) -> Path:
    """Random-init a model (same seed, same weights), save it with its tokenizer; return the dir."""
    special_ids = {
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    config = make_config(sizes, len(tokenizer), special_ids)
    config.initializer_range = std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
