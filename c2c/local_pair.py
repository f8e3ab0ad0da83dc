"""Both services of a model pair started in this process on free 127.0.0.1 ports.

What ``c2c eval`` (without ``--receiver``) and ``c2c demo`` run against: the real gRPC servers,
reached over loopback through real channels, started and stopped as one unit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PairPaths:
    """The three directories a C2C pair is made of."""

    receiver: Path
    sharer: Path
    fuser: Path


@dataclass(frozen=True)
class PairAddresses:
    """Where the started services listen."""

    receiver: str
    sharer: str


def bundled_paths() -> PairPaths:
    """The shipped pair (FileNotFoundError naming what is missing when it is not installed)."""
    from c2c.bundled import bundled_pair

    pair = bundled_pair()
    return PairPaths(receiver=pair.receiver, sharer=pair.sharer, fuser=pair.fuser)


@contextmanager
def local_pair(paths: PairPaths, text_hint_tokens: int = 64) -> Iterator[PairAddresses]:
    """Start the sharer, then the receiver pointed at it; stop both (receiver first) on exit."""
    from receiver_service.server import serve as serve_receiver
    from sharer_service.server import serve as serve_sharer

    for name in ("receiver", "sharer", "fuser"):
        path = getattr(paths, name)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{name} directory {path} does not exist")
    # The services log every start and every request; the caller prints what matters.
    logging.getLogger("receiver_service").setLevel(logging.WARNING)
    logging.getLogger("sharer_service").setLevel(logging.WARNING)
    sharer = serve_sharer(paths.sharer, host="127.0.0.1", port=0, wait=False)
    try:
        receiver = serve_receiver(
            paths.receiver,
            paths.fuser,
            f"127.0.0.1:{sharer.port}",
            host="127.0.0.1",
            port=0,
            text_hint_tokens=text_hint_tokens,
            wait=False,
        )
        try:
            yield PairAddresses(
                receiver=f"127.0.0.1:{receiver.port}", sharer=f"127.0.0.1:{sharer.port}"
            )
        finally:
            receiver.stop(grace_s=2.0)
    finally:
        sharer.stop(grace_s=2.0)
