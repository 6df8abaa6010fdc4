"""Request bodies over the ceiling are refused while they arrive, on the real ASGI server."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def _raw_request(base_url: str, head: str, chunks: int = 0, chunk: bytes = b"") -> tuple[bytes, int]:
    """Sends `head`, then up to `chunks` chunked pieces until the server stops reading; (response, bytes sent)."""
    url = urlsplit(base_url)
    sent = 0
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(head.encode())
        try:
            for _ in range(chunks):
                conn.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            conn.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: what follows reads its answer
        response = b""
        try:
            while data := conn.recv(65536):
                response += data
        except ConnectionResetError:
            pass
    return response, sent


def test_a_declared_body_over_the_ceiling_is_413_before_it_is_sent(asgi_server, settings) -> None:
    settings.MAX_UPLOAD_MB = 1

    response, _ = _raw_request(
        asgi_server,
        "POST /api/v1/documents/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {3 * 2**30}\r\n\r\n",
    )

    assert response.startswith(b"HTTP/1.1 413 ")
    assert b'"code": "too_large"' in response and b"files may be up to 1 MB" in response


def test_a_chunked_body_is_cut_off_at_the_ceiling(asgi_server, settings) -> None:
    settings.MAX_UPLOAD_MB = 1
    piece = b"x" * 65536

    response, sent = _raw_request(
        asgi_server,
        "POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        chunks=1024,  # 64 MB offered
        chunk=piece,
    )

    assert response.startswith(b"HTTP/1.1 413 ")
    assert b'"code": "too_large"' in response
    assert sent < 16 * 2**20  # the server stopped reading a little past its 2 MB ceiling (plus socket buffers)


def test_bodies_within_the_ceiling_pass_through(asgi_server, settings) -> None:
    settings.MAX_UPLOAD_MB = 1

    chunked = httpx.post(f"{asgi_server}/api/v1/documents/", content=iter([b"x" * 500_000] * 2), timeout=10)
    declared = httpx.post(f"{asgi_server}/api/v1/documents/", content=b"x" * 1_000_000, timeout=10)

    # Past the ceiling's check, the API itself answers: these requests carry no credentials.
    assert (chunked.status_code, declared.status_code) == (401, 401)
