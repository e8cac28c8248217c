"""The kit's network probe: a real listening socket answers, a closed port raises at once."""

from __future__ import annotations

import socket

import pytest

from gristmill.plugin.network import probe, probe_url


@pytest.fixture
def listening():
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def closed_port():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    return port  # nothing listens there once the server is closed


def test_a_listening_port_answers(listening):
    probe("127.0.0.1", listening, timeout=5)
    probe_url(f"http://127.0.0.1:{listening}/path", timeout=5)


def test_a_closed_port_raises_oserror(closed_port):
    with pytest.raises(OSError):
        probe("127.0.0.1", closed_port, timeout=5)
    with pytest.raises(OSError):
        probe_url(f"https://127.0.0.1:{closed_port}", timeout=5)
