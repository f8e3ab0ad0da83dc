"""The C2C projector for one receiver layer: sharer KV -> a gated residual on the receiver's KV.

Keys and values take separate, identical paths (DESIGN.md, "The fuser"): the concatenated
`[K_s | K_r]` feeds a shared SwiGLU trunk, which branches into a projection to the receiver's
`heads x head_dim` and a per-head-per-token sigmoid weight. A scalar gate logit per layer and per
path decides whether the layer is fused at all; `K_new = K_r + gate * w * proj` keeps the
receiver's own cache intact when the gate is off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ProjectorConfig:
    """Sizes of every layer's projector; the gate starts open so training sees the sharer."""

    hidden_size: int = 256
    trunk_blocks: int = 1
    projection_blocks: int = 1
    dropout: float = 0.0
    gate_init_logit: float = 1.0


class SwiGLUBlock(nn.Module):
    """Pre-RMSNorm SwiGLU feed-forward with a residual connection."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(width, eps=1e-6)
        self.gate_up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(self.norm(x)).chunk(2, dim=-1)
        return x + self.dropout(self.down(nn.functional.silu(gate) * up))


class TensorProjector(nn.Module):
    """One path (keys or values): returns the projection and its per-head-per-token weight."""

    def __init__(
        self,
        sharer_width: int,
        receiver_heads: int,
        receiver_head_dim: int,
        config: ProjectorConfig,
    ) -> None:
        super().__init__()
        self.receiver_heads = receiver_heads
        self.receiver_head_dim = receiver_head_dim
        hidden = config.hidden_size
        self.input = nn.Linear(sharer_width + receiver_heads * receiver_head_dim, hidden)
        self.trunk = nn.Sequential(
            *[SwiGLUBlock(hidden, config.dropout) for _ in range(config.trunk_blocks)]
        )
        self.projection = nn.Sequential(
            *[SwiGLUBlock(hidden, config.dropout) for _ in range(config.projection_blocks)],
            nn.Linear(hidden, receiver_heads * receiver_head_dim),
        )
        self.weight = nn.Sequential(
            SwiGLUBlock(hidden, config.dropout), nn.Linear(hidden, receiver_heads)
        )

    def forward(self, sharer: Tensor, receiver: Tensor) -> tuple[Tensor, Tensor]:
        """[B, Hs, N, Ds] and [B, Hr, N, Dr] -> proj [B, Hr, N, Dr], weight [B, Hr, N, 1]."""
        batch, _, length, _ = receiver.shape
        flat = torch.cat(
            [sharer.transpose(1, 2).flatten(2), receiver.transpose(1, 2).flatten(2)], dim=-1
        )
        hidden = self.trunk(self.input(flat))
        projection = self.projection(hidden).view(
            batch, length, self.receiver_heads, self.receiver_head_dim
        )
        weight = torch.sigmoid(self.weight(hidden)).view(batch, length, self.receiver_heads, 1)
        return projection.transpose(1, 2), weight.transpose(1, 2)


def gumbel_sigmoid(logit: Tensor, temperature: float) -> Tensor:
    """A differentiable, noisy relaxation of `logit > 0` (sharp as the temperature goes to 0)."""
    uniform = torch.rand_like(logit).clamp(1e-6, 1 - 1e-6)
    noise = torch.log(uniform) - torch.log1p(-uniform)
    return torch.sigmoid((logit + noise) / temperature)


class LayerProjector(nn.Module):
    """Key and value projectors of one receiver layer plus its two gate logits."""

    def __init__(
        self,
        sharer_heads: int,
        sharer_head_dim: int,
        receiver_heads: int,
        receiver_head_dim: int,
        config: ProjectorConfig,
    ) -> None:
        super().__init__()
        width = sharer_heads * sharer_head_dim
        self.key = TensorProjector(width, receiver_heads, receiver_head_dim, config)
        self.value = TensorProjector(width, receiver_heads, receiver_head_dim, config)
        # [key gate, value gate]
        self.gate_logits = nn.Parameter(torch.full((2,), config.gate_init_logit))

    def hard_gates(self) -> tuple[bool, bool]:
        """The inference gates: a path is fused only where its logit is positive."""
        key_on, value_on = (self.gate_logits > 0).tolist()
        return key_on, value_on

    def forward(
        self, k_r: Tensor, v_r: Tensor, k_s: Tensor, v_s: Tensor, temperature: float
    ) -> tuple[Tensor, Tensor]:
        """Gated residual fusion; Gumbel-sigmoid gates in training, hard gates otherwise."""
        if self.training:
            gates = gumbel_sigmoid(self.gate_logits, temperature)
        else:
            gates = (self.gate_logits > 0).to(self.gate_logits.dtype)
        k_proj, k_weight = self.key(k_s, k_r)
        v_proj, v_weight = self.value(v_s, v_r)
        k_new = k_r + gates[0] * k_weight * k_proj
        v_new = v_r + gates[1] * v_weight * v_proj
        return k_new, v_new


def gate_temperature(step: int, total_steps: int, start: float = 1.0, end: float = 0.001) -> float:
    """Geometric annealing from start (step 0) to end (step total_steps and after)."""
    if total_steps <= 0:
        return end
    fraction = min(step, total_steps) / total_steps
    return start * (end / start) ** fraction
