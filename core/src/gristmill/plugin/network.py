"""Whether a server answers, asked before a library that would retry for minutes.

Sources, tokenizers and executors that reach a server (the Hugging Face Hub, a Ray cluster) probe
it first, so that no network fails at once with a message saying what to do instead.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse


def probe(host: str | None, port: int, *, timeout: float) -> None:
    """Open and close a TCP connection to ``host:port``: :class:`OSError` when none opens within
    ``timeout`` seconds."""
    socket.create_connection((host, port), timeout=timeout).close()


def probe_url(url: str, *, timeout: float) -> None:
    """:func:`probe` the host of an http(s) ``url``, at its port or the scheme's (443, 80)."""
    parsed = urlparse(url)
    probe(
        parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80), timeout=timeout
    )
