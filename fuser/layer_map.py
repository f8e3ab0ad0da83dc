"""Which sharer layer feeds each receiver layer.

`last_aligned` pairs the last layers of both models and walks toward the front, so a deeper
receiver leaves its first layers unfused. `proportional` pairs layers at the same relative depth:
`j = argmin_k |i/Lr - k/Ls|`, so every receiver layer is fused.
"""

from __future__ import annotations

from collections.abc import Callable


def last_aligned(receiver_layers: int, sharer_layers: int) -> dict[int, int]:
    shared = min(receiver_layers, sharer_layers)
    return {receiver_layers - 1 - k: sharer_layers - 1 - k for k in range(shared)}


def proportional(receiver_layers: int, sharer_layers: int) -> dict[int, int]:
    # |i/Lr - k/Ls| scaled by Lr*Ls to stay in integers, so ties go to the shallower layer.
    return {
        i: min(range(sharer_layers), key=lambda k: abs(i * sharer_layers - k * receiver_layers))
        for i in range(receiver_layers)
    }


LAYER_MAPS: dict[str, Callable[[int, int], dict[int, int]]] = {
    "last_aligned": last_aligned,
    "proportional": proportional,
}


def build_layer_map(name: str, receiver_layers: int, sharer_layers: int) -> dict[int, int]:
    """Receiver layer -> sharer layer, sorted by receiver layer."""
    if name not in LAYER_MAPS:
        raise ValueError(f"unknown layer map {name!r}; expected one of {sorted(LAYER_MAPS)}")
    if receiver_layers < 1 or sharer_layers < 1:
        raise ValueError("both models need at least one layer")
    return dict(sorted(LAYER_MAPS[name](receiver_layers, sharer_layers).items()))
