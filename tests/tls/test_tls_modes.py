"""The other TLS configurations, on in-process clusters (`trioraft.server.serve` in the
test's nursery):

- a client-facing certificate from one CA and peer certificates from the cluster CA
  (the listener shows each side its own, by the peers' server name), client
  certificates optional;
- peer TLS only (the client API on plain HTTP), with a cluster token as well
  (defence in depth: a peer needs both), where the course routes over plaintext
  are refused and garbage TLS costs nothing.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.api.conftest import make_configs
from tests.tls.conftest import Certs
from trioraft.client import AsyncClient, TlsError
from trioraft.config import NodeConfig
from trioraft.node import RaftNode
from trioraft.server import serve
from trioraft.tls import peer_client_context
from trioraft.transport import HandshakeError, probe_peer

TOKEN = "peer-s3cret"


@asynccontextmanager
async def running(configs: list[NodeConfig]) -> AsyncIterator[list[RaftNode]]:
    async with trio.open_nursery() as nursery:
        nodes = [await nursery.start(serve, cfg) for cfg in configs]
        with trio.fail_after(15):
            while True:
                leaders = [n for n in nodes if n.is_leader]
                if leaders and all(n.leader_id == leaders[0].id for n in nodes):
                    break
                await trio.sleep(0.02)
        yield nodes
        nursery.cancel_scope.cancel()


def tls_configs(tmp_path: Path, scheme: str, **fields: Any) -> list[NodeConfig]:
    """Three configurations with `scheme` URLs and the TLS `fields` (callables of the
    node id are called)."""
    out = []
    for cfg in make_configs(3, tmp_path, election_timeout_ms=(500, 1000), heartbeat_ms=50):
        values = {k: (v(cfg.id) if callable(v) else v) for k, v in fields.items()}
        out.append(replace(
            cfg,
            advertise_url=cfg.advertise_url.replace("http://", f"{scheme}://"),
            peers={p: u.replace("http://", f"{scheme}://") for p, u in cfg.peers.items()},
            **values,
        ))  # fmt: skip
    return out


def peer_links(node: RaftNode) -> set[tuple[bool, str | None]]:
    return {(p["connected"], p.get("authenticated_by")) for p in node.status()["peers"].values()}


async def test_peers_get_the_peer_certificate_and_clients_the_client_facing_one(
    tmp_path: Path, certs: Certs
) -> None:
    assert certs.public is not None
    configs = tls_configs(
        tmp_path, "https",
        tls_cert=certs.public[0], tls_key=certs.public[1],
        peer_tls_cert=lambda i: certs.nodes[i][0], peer_tls_key=lambda i: certs.nodes[i][1],
        peer_tls_ca=certs.ca,
    )  # fmt: skip
    urls = [c.advertise_url for c in configs]
    async with running(configs) as nodes:
        # The streams verified the cluster CA and each member's name: the peers were
        # shown their peer certificates, not the client-facing one.
        for node in nodes:
            assert peer_links(node) == {(True, "tls")}
        # Clients are shown the client-facing certificate, and need none of their own.
        async with AsyncClient(urls, cacert=certs.client_ca) as client:
            await client.put("k", "v")
            assert await client.get("k") == "v"
        async with AsyncClient(urls, cacert=certs.ca) as client:
            with pytest.raises(TlsError, match="not signed by a CA this client trusts"):
                await client.get("k")


async def test_peer_tls_only_with_a_token_as_well(tmp_path: Path, certs: Certs) -> None:
    configs = tls_configs(
        tmp_path, "http", cluster_token=TOKEN,
        peer_tls_cert=lambda i: certs.nodes[i][0], peer_tls_key=lambda i: certs.nodes[i][1],
        peer_tls_ca=certs.ca,
    )  # fmt: skip
    url = configs[0].advertise_url
    async with running(configs) as nodes, httpx.AsyncClient(trust_env=False) as http:
        for node in nodes:
            assert peer_links(node) == {(True, "tls+token")}
        # The client API stays plain HTTP.
        assert (await http.put(f"{url}/kv/k", json={"value": "v"})).status_code == 200
        # A course request over plaintext, even with the token: refused.
        vote = {"term": 0, "candidateId": "node2", "lastLogIndex": 0, "lastLogTerm": 0}
        resp = await http.post(f"{url}/raft/request-vote", json=vote,
                               headers={"X-Cluster-Token": TOKEN})  # fmt: skip
        assert (resp.status_code, resp.json()["code"]) == (403, "tls_required")
        # So are the membership peer routes (who a node is; re-admission).
        for method, path in (("GET", "/raft/identity"), ("POST", "/raft/readmit"),
                             ("POST", "/raft/check-membership")):
            resp = await http.request(method, f"{url}{path}", json={},
                                      headers={"X-Cluster-Token": TOKEN})  # fmt: skip
            assert (resp.status_code, resp.json()["code"]) == (403, "tls_required"), path
        # A plaintext peer stream, even with the token: refused.
        with pytest.raises(HandshakeError) as refused:
            await probe_peer(url, token=TOKEN, local="node2", peer="node1")
        assert refused.value.code == "tls_required"
        # The right certificate without the token: refused (both are required).
        node2 = peer_client_context(*certs.nodes["node2"], certs.ca)
        ids = {n.name: n.id for n in nodes}  # member ids (one per incarnation)
        with pytest.raises(HandshakeError) as refused:
            await probe_peer(url, token=None, local=ids["node2"], peer=ids["node1"], tls=node2,
                             cluster_id=nodes[0].cluster_id)  # fmt: skip
        assert refused.value.code == "unauthorized"
        # Garbage after a TLS record header: the handshake fails, the node does not care.
        host, port = configs[0].listen_host, configs[0].listen_port
        async with await trio.open_tcp_stream(host, port) as raw:
            await raw.send_all(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)
            with trio.fail_after(5):
                answer = await raw.receive_some()
            assert answer[:1] in (b"", b"\x15")  # closed, or a TLS alert first
        server = nodes[0].status()["server"]
        assert server["tls_handshakes_failed"] >= 1
        assert (await http.get(f"{url}/kv/k")).json()["value"] == "v"


async def test_a_client_certificate_is_optional_unless_required(
    tmp_path: Path, certs: Certs
) -> None:
    """With peer TLS and HTTPS but no --tls-client-ca, a client shows no certificate and
    is served; a bad one fails its handshake (it is verified when shown)."""
    configs = tls_configs(
        tmp_path, "https",
        tls_cert=lambda i: certs.nodes[i][0], tls_key=lambda i: certs.nodes[i][1],
        tls_ca=certs.ca,
    )[:1]  # fmt: skip
    configs = [replace(configs[0], peers={})]
    async with running(configs):
        url = configs[0].advertise_url
        async with AsyncClient([url], cacert=certs.ca) as client:
            await client.put("k", "v")
        assert certs.foreign_node2 is not None
        async with AsyncClient([url], cacert=certs.ca, cert=certs.foreign_node2[0],
                               key=certs.foreign_node2[1]) as client:  # fmt: skip
            with pytest.raises(TlsError, match="does not trust this client's certificate"):
                await client.get("k")
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        async with httpx.AsyncClient(verify=ctx, trust_env=False) as http:
            assert (await http.get(f"{url}/kv/k")).json()["value"] == "v"
