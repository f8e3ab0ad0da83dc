"""Ports for the service processes that demo, eval and the benchmarks start."""

from __future__ import annotations

import socket

from c2c.local_pair import free_port


def test_ports_handed_to_children_are_never_repeated_and_are_free() -> None:
    # The kernel offers a random closed port for port 0: a few thousand draws repeat some.
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports[-1]))
