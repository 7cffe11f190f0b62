"""A stand-in for Docker's embedded DNS server (127.0.0.11:53 in every task on an overlay network): answers
A queries for a fixed set of names, NXDOMAIN for any other, over UDP, in a thread.

nginx re-resolves the production upstream names through it (`server ... resolve` with `resolver
127.0.0.11`), and such names are resolved by the resolver only, never from /etc/hosts. Used inside a
private network namespace (tests/gateway/test_render_production.py), where binding port 53 harms nobody.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Mapping

TTL = 5


def answer(query: bytes, names: Mapping[str, str | tuple[str, ...]]) -> bytes:
    """The response to one DNS query: the question echoed, an A record for each address of a known name
    (a service in DNS round robin has one per task)."""
    (ident,) = struct.unpack("!H", query[:2])
    labels, i = [], 12
    while query[i]:
        labels.append(query[i + 1 : i + 1 + query[i]].decode().lower())
        i += 1 + query[i]
    qtype, _ = struct.unpack("!HH", query[i + 1 : i + 5])
    question = query[12 : i + 5]
    found = names.get(".".join(labels))
    if found is None:
        return struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
    addresses = (found,) if isinstance(found, str) else found
    records = []
    if qtype == 1:  # A; any other type: the name exists, no record of that type
        records = [struct.pack("!HHHIH", 0xC00C, 1, 1, TTL, 4) + socket.inet_aton(a) for a in addresses]
    head = struct.pack("!HHHHHH", ident, 0x8180, 1, len(records), 0, 0)
    return head + question + b"".join(records)


class SwarmDns:
    def __init__(
        self, names: Mapping[str, str | tuple[str, ...]], address: str = "127.0.0.11", port: int = 53
    ) -> None:
        # Replaced whole to change an answer (as Swarm drops a lost task's address): the thread reads it.
        self.names: dict[str, str | tuple[str, ...]] = dict(names)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(0.2)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="swarm-dns", daemon=True)

    def start(self) -> SwarmDns:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                query, client = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            with contextlib.suppress(IndexError, struct.error, UnicodeDecodeError):
                self.sock.sendto(answer(query, self.names), client)
