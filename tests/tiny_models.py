"""Tiny random-initialized model pairs with really different tokenizers, built offline in seconds.

The receiver is Qwen3-shaped with a byte-level BPE tokenizer; the sharers are Llama- and
Qwen2-shaped with a SentencePiece-style (metaspace) tokenizer, and differ from the receiver in
depth, KV heads and head dim, so every shape path of the fuser is exercised.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from c2c.model_building import ModelSizes, build_causal_lm
from c2c.tokenizer_training import TokenizerSpec, train_tokenizer

RECEIVER_SIZES = ModelSizes(
    family="qwen3",
    num_layers=4,
    hidden_size=64,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    intermediate_size=128,
)
LLAMA_SHARER_SIZES = ModelSizes(
    family="llama",
    num_layers=3,
    hidden_size=48,
    num_heads=3,
    num_kv_heads=3,
    head_dim=16,
    intermediate_size=96,
)
QWEN2_SHARER_SIZES = ModelSizes(
    family="qwen2",
    num_layers=6,
    hidden_size=64,
    num_heads=4,
    num_kv_heads=1,
    head_dim=16,
    intermediate_size=128,
)

COLORS = ["red", "blue", "green", "amber", "violet", "white", "black", "gold"]
ANIMALS = ["cat", "dog", "owl", "fox", "eel", "yak", "bee", "emu"]
TRICKY_TEXTS = [
    "Hello,   world!\tTabs\tand  spaces   everywhere.",
    "Prices: $12.50, 3,141 items, 0.001% off -- 2026-11-29.",
    "Café naïve façade Zürich Ångström smörgåsbord.",
    "Emoji: 🙂🚀 ok 👍🏽 done; CJK: 你好世界, 日本語.",
    "def fuse(k, v):\n    return k + v  # residual\n",
]


def tokenizer_corpus() -> list[str]:
    """Text the tiny tokenizers are trained on: synthetic records plus tricky strings."""
    rng = random.Random(0)
    lines = list(TRICKY_TEXTS)
    for _ in range(400):
        color, animal = rng.choice(COLORS), rng.choice(ANIMALS)
        number = rng.randint(0, 999)
        lines.append(f"The {color} {animal} has number {number}. Which animal is {color}?")
        lines.append(f"It is the {animal}, number {number}.")
    return lines


def recall_records(count: int, seed: int) -> list[dict[str, str]]:
    """Prompt/response records whose response repeats facts stated in the prompt.

    The response is only predictable from the prompt's content, so a fuser that carries the
    sharer's view of the prompt into the receiver's cache can lower the response loss.
    """
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        color, animal = rng.choice(COLORS), rng.choice(ANIMALS)
        prompt = f"The {color} {animal} sleeps. Say the animal and its color:"
        records.append({"prompt": prompt, "response": f" {animal} {color}."})
    return records


@dataclass(frozen=True)
class TinyPair:
    receiver: Path
    llama_sharer: Path
    qwen2_sharer: Path


def build_tiny_models(root: Path) -> TinyPair:
    """Train both tokenizers and build the three models under root."""
    corpus = tokenizer_corpus()
    receiver_tokenizer = train_tokenizer(TokenizerSpec("byte_level", vocab_size=400), corpus)
    sharer_tokenizer = train_tokenizer(TokenizerSpec("metaspace", vocab_size=220), corpus)
    return TinyPair(
        receiver=build_causal_lm(RECEIVER_SIZES, receiver_tokenizer, root / "receiver", seed=1),
        llama_sharer=build_causal_lm(
            LLAMA_SHARER_SIZES, sharer_tokenizer, root / "llama_sharer", seed=2
        ),
        qwen2_sharer=build_causal_lm(
            QWEN2_SHARER_SIZES, sharer_tokenizer, root / "qwen2_sharer", seed=3
        ),
    )
