"""Free loopback TCP ports (the one place the runner and the tests get them from)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on right now. The kernel picks it from the ephemeral range, so two
    calls in a row do not collide; another process could still take it before we bind (rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int, avoid: tuple[int, ...] = ()) -> tuple[int, ...]:
    """`count` distinct free ports (sockets held open together so the kernel cannot repeat one), none of
    them in `avoid` (ports picked earlier but not bound yet, such as a local run's doors)."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
            if (port := sock.getsockname()[1]) not in avoid:
                ports.append(port)
        return tuple(ports)
    finally:
        for sock in socks:
            sock.close()
