"""Fuser checkpoints: safetensors weights plus a JSON config naming the pair they were trained for.

Loading against another pair is refused (WrongModel) with the side that differs, because a fuser
trained for one pair silently produces garbage for any other.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from c2c.errors import WrongModel
from c2c.model_loading import ModelDims, torch_dtype
from fuser.fuser import C2CFuser, FuserConfig

WEIGHTS_FILE = "fuser.safetensors"
CONFIG_FILE = "fuser_config.json"
FORMAT_VERSION = 1
# What must agree between the checkpoint's model and the served one (not the compute dtype).
_IDENTITY_FIELDS = (
    "model_fingerprint",
    "tokenizer_fingerprint",
    "architecture",
    "num_layers",
    "num_kv_heads",
    "head_dim",
)


def save_checkpoint(fuser: C2CFuser, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write weights and config into out_dir; extra (e.g. training state) goes into the JSON."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {
        name: tensor.detach().contiguous().cpu() for name, tensor in fuser.state_dict().items()
    }
    save_file(weights, out_dir / WEIGHTS_FILE, metadata={"format": "c2c-fuser"})
    document = {
        "format_version": FORMAT_VERSION,
        "config": fuser.config.to_dict(),
        "layer_map": {str(r): s for r, s in fuser.layer_map().items()},
        **(extra or {}),
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))
    return out_dir


def read_checkpoint_config(checkpoint_dir: str | Path) -> dict:
    """The checkpoint's JSON document, or a clear error when it is missing or unreadable."""
    path = Path(checkpoint_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a fuser checkpoint (no {CONFIG_FILE})")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {document.get('format_version')}")
    return document


def check_pair(config: FuserConfig, receiver: ModelDims | None, sharer: ModelDims | None) -> None:
    """Raise WrongModel naming the side (and field) that differs from the checkpoint's pair."""
    for side, expected, actual in (
        ("receiver", config.receiver, receiver),
        ("sharer", config.sharer, sharer),
    ):
        if actual is None:
            continue
        for name in _IDENTITY_FIELDS:
            want, got = getattr(expected, name), getattr(actual, name)
            if want != got:
                raise WrongModel(
                    f"fuser checkpoint was trained for {side} {expected.name!r} with {name} "
                    f"{want!r}, but the {side} is {actual.name!r} with {name} {got!r}"
                )


def load_checkpoint(
    checkpoint_dir: str | Path,
    receiver: ModelDims | None = None,
    sharer: ModelDims | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> C2CFuser:
    """A fuser in eval mode, after checking it belongs to the given receiver and sharer."""
    document = read_checkpoint_config(checkpoint_dir)
    try:
        config = FuserConfig.from_dict(document["config"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{checkpoint_dir}/{CONFIG_FILE} lacks a valid config: {error}") from error
    check_pair(config, receiver, sharer)
    fuser = C2CFuser(config)
    weights_path = Path(checkpoint_dir) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} has no {WEIGHTS_FILE}")
    try:
        fuser.load_state_dict(load_file(weights_path))
    except RuntimeError as error:
        raise ValueError(f"{weights_path} does not match {CONFIG_FILE}: {error}") from error
    return fuser.to(device=device, dtype=torch_dtype(dtype)).eval()
