"""The in-process reference for a fused prompt cache: what training optimizes and services match.

Fusion covers prompt positions 0..N-2; the last prompt token is then run by the receiver on the
fused cache, and its logits give the first generated token (DESIGN.md, "The fuser").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import DynamicCache

from c2c.errors import BadRequest
from c2c.model_loading import LoadedModel
from fuser.alignment import align_positions
from fuser.fuser import C2CFuser


@torch.no_grad()
def receiver_prefill(receiver: LoadedModel, token_ids: Sequence[int]) -> DynamicCache:
    """The receiver's own cache for token_ids (batch 1)."""
    ids = torch.tensor([list(token_ids)], device=receiver.device)
    return receiver.model(input_ids=ids, use_cache=True).cache


@torch.no_grad()
def sharer_aligned_kv(
    sharer: LoadedModel,
    strategy: str,
    text: str,
    spans: Sequence[tuple[int, int]],
    layers: Sequence[int],
    receiver_token_ids: Sequence[int] | None = None,
) -> dict[int, tuple[Tensor, Tensor]]:
    """The sharer's prefill of text, gathered to one position per receiver span, for layers."""
    sharer_ids, positions = align_positions(
        strategy, text, spans, sharer.tokenizer, receiver_token_ids
    )
    ids = torch.tensor([sharer_ids], device=sharer.device)
    cache = sharer.model(input_ids=ids, use_cache=True).cache
    index = torch.tensor(positions, device=sharer.device)
    return {
        layer: (
            cache.layers[layer].keys.index_select(2, index),
            cache.layers[layer].values.index_select(2, index),
        )
        for layer in layers
    }


def fused_prompt_cache(
    receiver: LoadedModel,
    sharer: LoadedModel,
    fuser: C2CFuser,
    prompt_ids: Sequence[int],
    text: str,
    spans: Sequence[tuple[int, int]],
) -> DynamicCache:
    """Receiver cache of prompt positions 0..N-2 with the sharer's aligned cache fused in.

    Gradients flow into the fuser (both models run without them), so training calls this too.
    """
    prompt_ids = [int(token) for token in prompt_ids]
    if len(prompt_ids) < 2:
        raise BadRequest("a C2C prompt needs at least 2 tokens (N-1 fused, the last one run)")
    if len(spans) != len(prompt_ids):
        raise BadRequest(f"{len(spans)} spans for {len(prompt_ids)} prompt tokens")
    fused_ids, fused_spans = prompt_ids[:-1], list(spans[:-1])
    cache = receiver_prefill(receiver, fused_ids)
    sharer_kv = sharer_aligned_kv(
        sharer,
        fuser.config.alignment,
        text,
        fused_spans,
        fuser.required_sharer_layers(),
        receiver_token_ids=fused_ids,
    )
    return fuser.fuse_cache(cache, sharer_kv)
