"""Plain causal-LM pretraining of a freshly built model on a list of texts, on CPU.

Each text is one training sequence ending in the tokenizer's end-of-sequence token, so a model
learns where an answer stops. Batches are drawn at random with a seeded generator; the loss is
next-token cross-entropy over every real (non-padding) token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer


@dataclass(frozen=True)
class PretrainingConfig:
    """Optimizer and schedule: AdamW, linear warmup, cosine decay to a tenth of ``lr``."""

    steps: int
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_tokens: int = 128
    seed: int = 0


@dataclass(frozen=True)
class PretrainingResult:
    """How a run went: the loss at the start and the end (mean of the last 20 steps)."""

    steps: int
    first_loss: float
    final_loss: float
    seconds: float
    tokens: int


def _learning_rate(step: int, config: PretrainingConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _encode(texts: Sequence[str], tokenizer, max_tokens: int) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [ids[: max_tokens - 1] + [eos] for ids in encoded]


def _batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(ids)
    return input_ids, labels


def pretrain(
    model_dir: str | Path,
    texts: Sequence[str],
    config: PretrainingConfig,
    description: str = "pretrain",
) -> PretrainingResult:
    """Train the model saved in ``model_dir`` on ``texts`` and save it back in place."""
    if not texts:
        raise ValueError("pretraining needs at least one text")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    sequences = _encode(texts, tokenizer, config.max_tokens)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    with tqdm(range(config.steps), desc=description, unit="step") as bar:
        for step in bar:
            rows = torch.randint(len(sequences), (config.batch_size,), generator=generator)
            input_ids, labels = _batch([sequences[int(i)] for i in rows], pad_id)
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, config)
            loss = model(input_ids=input_ids, attention_mask=labels != -100, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            tokens += int((labels != -100).sum())
            if step % 10 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.save_pretrained(model_dir, safe_serialization=True)
    return PretrainingResult(
        steps=config.steps,
        first_loss=losses[0],
        final_loss=sum(losses[-20:]) / len(losses[-20:]),
        seconds=time.perf_counter() - start,
        tokens=tokens,
    )
