"""The client's credentials and its errors, against small in-process servers: every
TLS failure is a TlsError that says what is wrong and what to pass; 401 and 403 are
Unauthorized and Forbidden; the token travels as a bearer header."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from tests.tls.conftest import Certs, Pair
from trioraft import cli
from trioraft.client import AsyncClient, Client, Forbidden, TlsError, Unauthorized

OK = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 30\r\n"
      b"connection: close\r\n\r\n" b'{"key":"k","value":"v","x":0 }')  # fmt: skip


@asynccontextmanager
async def stub_server(cert: Pair | None) -> AsyncIterator[int]:
    """One port that answers every request with OK, over TLS with `cert` (or plain)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    ctx = None
    if cert is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*cert)

    async def handle(stream: trio.SocketStream) -> None:
        conn: trio.abc.Stream = stream
        try:
            if ctx is not None:
                conn = trio.SSLStream(stream, ctx, server_side=True, https_compatible=True)
                await conn.do_handshake()
            await conn.receive_some()
            await conn.send_all(OK)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(conn)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def failure(url: str, **creds: object) -> str:
    async with AsyncClient([url], timeout=5, **creds) as client:  # type: ignore[arg-type]
        with pytest.raises(TlsError) as err:
            await client.get("k")
    assert err.value.code == "tls"
    return str(err.value)


async def test_the_stub_answers_a_client_with_the_right_ca(certs: Certs) -> None:
    async with stub_server(certs.nodes["node1"]) as port:
        async with AsyncClient([f"https://127.0.0.1:{port}"], cacert=certs.ca) as client:
            assert await client.get("k") == "v"
        # HOST:PORT means https:// when a CA is given.
        async with AsyncClient([f"127.0.0.1:{port}"], cacert=certs.ca) as client:
            assert client.endpoints == (f"https://127.0.0.1:{port}",)
            assert await client.get("k") == "v"


async def test_every_tls_failure_says_what_is_wrong(certs: Certs) -> None:
    async with stub_server(certs.nodes["node1"]) as port:
        message = await failure(f"https://127.0.0.1:{port}")
        assert "not signed by a CA this client trusts" in message
        assert "--cacert" in message
    async with stub_server(certs.expired_node1) as port:
        message = await failure(f"https://127.0.0.1:{port}", cacert=certs.ca)
        assert "expired" in message
    async with stub_server(certs.cn_node1) as port:  # no name for 127.0.0.1
        message = await failure(f"https://127.0.0.1:{port}", cacert=certs.ca)
        assert "not issued for this host name" in message
    async with stub_server(None) as port:  # https:// to a plain HTTP port
        message = await failure(f"https://127.0.0.1:{port}", cacert=certs.ca)
        assert "does not speak TLS on this port" in message


def test_credential_files_that_cannot_be_used_are_refused_up_front(
    certs: Certs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="cannot load the CA bundle"):
        Client(["https://h:1"], cacert=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="cannot use the client certificate"):
        Client(["https://h:1"], cert=certs.nodes["node1"][0], key=certs.nodes["node2"][1])
    with pytest.raises(ValueError, match="needs its certificate"):
        Client(["https://h:1"], key=certs.nodes["node1"][1])
    with pytest.raises(ValueError, match="printable ASCII"):
        Client(["https://h:1"], token="two words")
    with pytest.raises(SystemExit) as exit_:
        cli.run(["get", "k", "--cacert", str(tmp_path / "missing.pem")], {})
    assert exit_.value.code == cli.EXIT_USAGE
    assert "cannot load the CA bundle" in capsys.readouterr().err


def test_the_token_is_a_bearer_header_and_401_403_say_so() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        if request.method == "PUT":
            return httpx.Response(403, json={"error": "this token is read-only",
                                             "code": "forbidden"})  # fmt: skip
        return httpx.Response(401, json={"error": "unknown client token",
                                         "code": "unauthorized"})  # fmt: skip

    with Client(["http://n:1"], token="t0k3n", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(Unauthorized, match="--token"):
            c.get("k")
        with pytest.raises(Forbidden, match="read-only"):
            c.put("k", "v")
    assert seen == ["Bearer t0k3n", "Bearer t0k3n"]


def test_the_cli_token_comes_from_the_flag_or_the_environment() -> None:
    from trioraft.cli import _credentials, build_parser

    parser = build_parser()
    args = parser.parse_args(["get", "k", "--token", "flag-token"])
    assert _credentials(args, {"TRIORAFT_TOKEN": "env"})["token"] == "flag-token"
    args = parser.parse_args(["--cacert", "ca.pem", "get", "k"])
    creds = _credentials(args, {"TRIORAFT_TOKEN": "env", "TRIORAFT_KEY": "k.pem",
                                "TRIORAFT_CERT": "c.pem"})  # fmt: skip
    assert creds == {"cacert": "ca.pem", "cert": "c.pem", "key": "k.pem", "token": "env"}
    assert args.key == "k"  # the positional KEY is not the --key option
