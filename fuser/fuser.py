"""The whole fuser for one model pair: a projector per mapped receiver layer, fused layer by layer.

The receiver service fuses each layer as the sharer's stream delivers it (`fuse_layer`), and asks
up front which sharer layers it needs (`required_sharer_layers`): a layer whose inference gates
are both off is the receiver's own cache, bit for bit, and costs no sharer data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from c2c.errors import FusionInputError
from c2c.model_loading import ModelDims
from fuser.layer_map import build_layer_map
from fuser.projector import LayerProjector, ProjectorConfig


class LayerFusionError(FusionInputError):
    """Tensors for one receiver layer disagree with the fuser; says which layer and how."""

    def __init__(self, layer: int, problem: str) -> None:
        super().__init__(f"receiver layer {layer}: {problem}")
        self.layer = layer
        self.problem = problem


@dataclass
class FuserConfig:
    """Everything that defines a fuser for a pair; saved beside the checkpoint's weights."""

    receiver: ModelDims
    sharer: ModelDims
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    layer_map: str = "last_aligned"
    alignment: str = "offsets"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> FuserConfig:
        return cls(
            receiver=ModelDims(**data["receiver"]),
            sharer=ModelDims(**data["sharer"]),
            projector=ProjectorConfig(**data["projector"]),
            layer_map=data["layer_map"],
            alignment=data["alignment"],
        )


class C2CFuser(nn.Module):
    """Projects a sharer's KV cache into a receiver's and adds it under learned per-layer gates."""

    def __init__(self, config: FuserConfig) -> None:
        super().__init__()
        self.config = config
        self._layer_map = build_layer_map(
            config.layer_map, config.receiver.num_layers, config.sharer.num_layers
        )
        self.projectors = nn.ModuleDict(
            {
                str(layer): LayerProjector(
                    config.sharer.num_kv_heads,
                    config.sharer.head_dim,
                    config.receiver.num_kv_heads,
                    config.receiver.head_dim,
                    config.projector,
                )
                for layer in self._layer_map
            }
        )
        # Set by the training loop each step; only read in training mode.
        self.gate_temperature = 1.0

    def layer_map(self) -> dict[int, int]:
        """Receiver layer -> sharer layer, for every receiver layer that has a projector."""
        return dict(self._layer_map)

    def hard_gates(self, receiver_layer: int) -> tuple[bool, bool]:
        """(key gate, value gate) at inference; both off for an unmapped layer."""
        if receiver_layer not in self._layer_map:
            return False, False
        return self.projectors[str(receiver_layer)].hard_gates()

    def fused_receiver_layers(self) -> list[int]:
        """Receiver layers that fuse anything: in training all mapped ones, else gated-on ones."""
        return [layer for layer in self._layer_map if self.training or any(self.hard_gates(layer))]

    def required_sharer_layers(self) -> list[int]:
        """Sharer layers to stream, in the order the receiver layers they feed are fused."""
        needed: list[int] = []
        for layer in self.fused_receiver_layers():
            if self._layer_map[layer] not in needed:
                needed.append(self._layer_map[layer])
        return needed

    def _check_shape(
        self, layer: int, name: str, tensor: Tensor, heads: int, head_dim: int
    ) -> None:
        if tensor is None:
            raise LayerFusionError(layer, f"{name} is missing")
        if tensor.dim() != 4:
            raise LayerFusionError(
                layer, f"{name} has shape {list(tensor.shape)}, expected [B, H, N, D]"
            )
        if tensor.shape[1] != heads:
            raise LayerFusionError(layer, f"{name} has {tensor.shape[1]} heads, expected {heads}")
        if tensor.shape[3] != head_dim:
            raise LayerFusionError(
                layer, f"{name} has head_dim {tensor.shape[3]}, expected {head_dim}"
            )

    def check_inputs(self, layer: int, k_r: Tensor, v_r: Tensor, k_s: Tensor, v_s: Tensor) -> None:
        """Raise LayerFusionError naming the layer for any shape, length or value problem."""
        receiver, sharer = self.config.receiver, self.config.sharer
        sharer_layer = self._layer_map[layer]
        named = {
            "receiver keys": k_r,
            "receiver values": v_r,
            f"sharer layer {sharer_layer} keys": k_s,
            f"sharer layer {sharer_layer} values": v_s,
        }
        for name, tensor in (("receiver keys", k_r), ("receiver values", v_r)):
            self._check_shape(layer, name, tensor, receiver.num_kv_heads, receiver.head_dim)
        for name, tensor in (("keys", k_s), ("values", v_s)):
            self._check_shape(
                layer,
                f"sharer layer {sharer_layer} {name}",
                tensor,
                sharer.num_kv_heads,
                sharer.head_dim,
            )
        batch, length = k_r.shape[0], k_r.shape[2]
        for name, tensor in (
            ("receiver values", v_r),
            ("sharer keys", k_s),
            ("sharer values", v_s),
        ):
            if tensor.shape[0] != batch or tensor.shape[2] != length:
                raise LayerFusionError(
                    layer,
                    f"{name} have batch {tensor.shape[0]} and sequence length {tensor.shape[2]}, "
                    f"receiver keys have batch {batch} and sequence length {length}",
                )
        # One device sync for all four tensors; find the culprit only when something is wrong.
        finite = torch.stack([torch.isfinite(t).all().to(k_r.device) for t in named.values()])
        if not bool(finite.all()):
            culprit = list(named)[int((~finite).nonzero()[0])]
            raise LayerFusionError(layer, f"{culprit} contains NaN or Inf")

    def fuse_layer(
        self, receiver_layer: int, k_r: Tensor, v_r: Tensor, k_s: Tensor, v_s: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Receiver layer's fused (keys, values); a path whose gate is off is returned as given."""
        if not 0 <= receiver_layer < self.config.receiver.num_layers:
            raise LayerFusionError(
                receiver_layer,
                f"no such layer; the receiver has {self.config.receiver.num_layers} layers",
            )
        if receiver_layer not in self._layer_map:
            return k_r, v_r
        # One read of the gates per call: they sync the device.
        gates = None if self.training else self.hard_gates(receiver_layer)
        if gates == (False, False):
            return k_r, v_r
        self.check_inputs(receiver_layer, k_r, v_r, k_s, v_s)
        projector = self.projectors[str(receiver_layer)]
        device, dtype = projector.gate_logits.device, projector.gate_logits.dtype
        k_new, v_new = projector(
            *(t.to(device, dtype) for t in (k_r, v_r, k_s, v_s)), self.gate_temperature
        )
        k_new, v_new = k_new.to(k_r.dtype), v_new.to(v_r.dtype)
        if gates is not None:
            k_new = k_new if gates[0] else k_r
            v_new = v_new if gates[1] else v_r
        return k_new, v_new

    def fuse_cache(
        self, receiver_cache: DynamicCache, sharer_kv: Mapping[int, tuple[Tensor, Tensor]]
    ) -> DynamicCache:
        """A new cache: every receiver layer fused with the sharer layer it maps to (by index)."""
        return fuse_cache_layers(self, self.fuse_layer, receiver_cache, sharer_kv)


LayerFusion = Callable[[int, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def fuse_cache_layers(
    fuser: C2CFuser,
    fuse_layer: LayerFusion,
    receiver_cache: DynamicCache,
    sharer_kv: Mapping[int, tuple[Tensor, Tensor]],
) -> DynamicCache:
    """Walk the receiver cache, fusing open layers with `fuse_layer` (the fuser's or a runner's)."""
    if len(receiver_cache.layers) != fuser.config.receiver.num_layers:
        raise FusionInputError(
            f"receiver cache has {len(receiver_cache.layers)} layers, the fuser's receiver "
            f"has {fuser.config.receiver.num_layers}"
        )
    layer_map = fuser.layer_map()
    fused = set(fuser.fused_receiver_layers())
    layers = []
    for layer, cached in enumerate(receiver_cache.layers):
        if layer not in fused:
            layers.append((cached.keys, cached.values))
            continue
        sharer_layer = layer_map[layer]
        if sharer_layer not in sharer_kv:
            raise LayerFusionError(layer, f"sharer layer {sharer_layer} is missing")
        layers.append(fuse_layer(layer, cached.keys, cached.values, *sharer_kv[sharer_layer]))
    return DynamicCache(ddp_cache_data=layers)
