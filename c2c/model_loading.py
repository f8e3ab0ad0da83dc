"""Load a local Hugging Face causal LM for either side of a C2C pair, and describe it.

Both services and the fuser need the same facts about a model (depth, KV heads, head dim, which
tokenizer, which weights), so they are read once here into a `ModelDims` card. Fingerprints let a
receiver refuse a sharer or a fuser checkpoint that belongs to another model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from c2c.errors import UnsupportedModel
from protos import c2c_pb2

SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Keys of config.json that change with the writing software, not with the model.
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "dtype", "torch_dtype")


@dataclass(frozen=True)
class ModelDims:
    """What the fuser and the wire need to know about one model."""

    name: str
    architecture: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    model_fingerprint: str
    tokenizer_fingerprint: str


@dataclass
class LoadedModel:
    """A frozen model in eval mode, its fast tokenizer and its card."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    card: ModelDims

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a dtype name, refusing names we do not serve."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def check_supported(config: PretrainedConfig) -> str:
    """The architecture name, or UnsupportedModel saying what the fuser cannot serve."""
    architectures = list(getattr(config, "architectures", None) or [])
    architecture = architectures[0] if architectures else f"{config.model_type} (no architectures)"
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModel(
            f"architecture {architecture} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    layer_types = getattr(config, "layer_types", None) or []
    other_layers = sorted({t for t in layer_types if t != "full_attention"})
    if other_layers:
        raise UnsupportedModel(
            f"{architecture} has {', '.join(other_layers)} layers; only full-attention "
            "DynamicCache layers can be fused"
        )
    if getattr(config, "use_sliding_window", False):
        raise UnsupportedModel(f"{architecture} uses sliding-window attention; cannot be fused")
    return architecture


def head_dim_of(config: PretrainedConfig) -> int:
    """Per-head dimension: explicit in Qwen3/Llama configs, hidden/heads in Qwen2."""
    explicit = getattr(config, "head_dim", None)
    return int(explicit) if explicit else config.hidden_size // config.num_attention_heads


def model_fingerprint(path: str | Path) -> str:
    """Hash of the normalized config plus every safetensors file's bytes."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    for key in _VOLATILE_CONFIG_KEYS:
        config.pop(key, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    weight_files = sorted(path.glob("*.safetensors"))
    if not weight_files:
        raise UnsupportedModel(f"{path} has no *.safetensors weights")
    for weight_file in weight_files:
        digest.update(weight_file.name.encode())
        file_digest = hashlib.sha256()
        with weight_file.open("rb") as f:
            while chunk := f.read(1 << 24):
                file_digest.update(chunk)
        digest.update(file_digest.digest())
    return digest.hexdigest()[:32]


def tokenizer_fingerprint(path: str | Path) -> str:
    """Hash of tokenizer.json: two tokenizers with the same file split text the same way."""
    tokenizer_file = Path(path) / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise UnsupportedModel(f"{path} has no tokenizer.json (a fast tokenizer is required)")
    return hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()[:32]


def read_dims(path: str | Path, dtype: str = "float32") -> ModelDims:
    """The card of a model directory without loading its weights."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UnsupportedModel(f"{path} is not a model directory (no config.json)")
    config = AutoConfig.from_pretrained(path)
    return ModelDims(
        name=path.name,
        architecture=check_supported(config),
        num_layers=config.num_hidden_layers,
        num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
        head_dim=head_dim_of(config),
        dtype=dtype,
        model_fingerprint=model_fingerprint(path),
        tokenizer_fingerprint=tokenizer_fingerprint(path),
    )


def load_causal_lm(path: str | Path, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """Load a supported model frozen in eval mode with its fast tokenizer."""
    card = read_dims(path, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModel(f"{path}: tokenizer is not a fast tokenizer (offsets are needed)")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype)).to(device)
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, card=card)


def card_to_proto(
    card: ModelDims, max_prompt_tokens: int = 0, version: str = ""
) -> c2c_pb2.ModelCard:
    return c2c_pb2.ModelCard(
        model_name=card.name,
        model_fingerprint=card.model_fingerprint,
        architecture=card.architecture,
        num_layers=card.num_layers,
        num_kv_heads=card.num_kv_heads,
        head_dim=card.head_dim,
        dtype=card.dtype,
        tokenizer_fingerprint=card.tokenizer_fingerprint,
        max_prompt_tokens=max_prompt_tokens,
        version=version,
    )


def card_from_proto(message: c2c_pb2.ModelCard) -> ModelDims:
    return ModelDims(
        name=message.model_name,
        architecture=message.architecture,
        num_layers=message.num_layers,
        num_kv_heads=message.num_kv_heads,
        head_dim=message.head_dim,
        dtype=message.dtype,
        model_fingerprint=message.model_fingerprint,
        tokenizer_fingerprint=message.tokenizer_fingerprint,
    )
