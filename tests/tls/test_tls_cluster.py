"""A three-node process cluster on TLS (`trioraft serve` processes, shared by this module):
HTTPS with required client certificates, peer mutual TLS with the cluster CA.

What it backs (docs/security.md):
- a TLS cluster writes, serves linearizable reads, fails over and catches up;
- `trioraft status` and `put/get` work over TLS with the CA and a client certificate
  (flags and environment), and clients without the right credentials fail clearly;
- a peer presenting a certificate for another name cannot speak as that member, on a
  peer stream or on a course route; nor can a client certificate that names a member,
  a certificate from another CA, or a plaintext peer.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.tls.conftest import Certs
from trioraft import cli
from trioraft.client import Client, TlsError
from trioraft.testing.procs import ProcCluster, ProcTls
from trioraft.tls import peer_client_context
from trioraft.transport import HandshakeError, probe_peer

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def shared(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    tls = ProcTls(certs.ca, certs.nodes, client_ca=certs.client_ca, client_cert=certs.client)
    cluster = ProcCluster(3, tmp_path_factory.mktemp("tls-cluster"), tls=tls,
                          election_timeout_ms="500-1000", heartbeat_ms=100)  # fmt: skip
    try:
        yield cluster
    finally:
        cluster.close(grace=2.0)


@pytest.fixture
async def cluster(shared: ProcCluster) -> AsyncIterator[ProcCluster]:
    """The shared cluster, every node running and agreeing on a leader."""
    try:
        await shared.boot()
        yield shared
    finally:
        await shared.close_http()  # bound to this test's Trio loop


async def test_a_tls_cluster_writes_reads_and_fails_over(cluster: ProcCluster) -> None:
    leader = await cluster.wait_for_leader()
    assert all(url.startswith("https://") for url in cluster.urls.values())
    for i in range(10):
        await cluster.put(f"k{i}", f"v{i}")
    follower = next(n for n in cluster.ids if n != leader)
    assert await cluster.get("k9", follower) == "v9"  # linearizable, via a follower
    assert await cluster.get("k0") == "v0"
    status = await cluster.status(leader)
    assert status is not None
    links = status["peers"]
    assert {p["authenticated_by"] for p in links.values()} == {"tls"}, links
    assert all(p["connected"] for p in links.values()), links

    cluster.kill(leader)
    new = await cluster.wait_for_leader(exclude={leader})
    assert new != leader
    await cluster.put("after", "failover")
    assert await cluster.get("after") == "failover"
    assert await cluster.get("k5") == "v5"
    cluster.start(leader)  # it comes back over TLS and catches up
    await cluster.wait_caught_up()
    state = await cluster.wait_converged()
    assert state["after"] == "failover"
    assert state["k3"] == "v3"


async def test_the_cli_works_over_tls_with_the_ca_and_a_client_certificate(
    cluster: ProcCluster, certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cluster.client_args()
    assert "--cacert" in args
    assert "--cert" in args
    assert cli.run([*args, "put", "cli-key", "cli-value"], {}) == 0
    assert cli.run([*args, "get", "cli-key"], {}) == 0
    assert capsys.readouterr().out.splitlines() == ["OK", "cli-value"]

    assert cli.run([*args, "status"], {}) == 0
    table = capsys.readouterr().out
    assert "leader" in table
    for url in cluster.urls.values():
        assert url in table

    # The environment forms, and HOST:PORT endpoints meaning https:// with a CA.
    assert certs.client is not None
    env = {
        "TRIORAFT_ENDPOINTS": ",".join(u.removeprefix("https://") for u in cluster.urls.values()),
        "TRIORAFT_CACERT": str(certs.ca),
        "TRIORAFT_CERT": str(certs.client[0]),
        "TRIORAFT_KEY": str(certs.client[1]),
    }
    assert cli.run(["get", "cli-key"], env) == 0
    assert cli.run(["status", "--json"], env) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "cli-value"
    rows = json.loads(out[1])
    assert sorted(r["status"]["id"] for r in rows) == cluster.ids


async def test_clients_without_the_right_credentials_fail_clearly(
    cluster: ProcCluster, certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoints = cluster.endpoints()
    # No CA: the nodes' certificates are not trusted (the system CAs do not know them).
    assert cli.run(["--endpoints", endpoints, "get", "k"], {}) == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert "not signed by a CA this client trusts" in err, err
    assert "--cacert" in err, err
    # The CA but no client certificate, which these nodes require.
    assert cli.run(["--endpoints", endpoints, "--cacert", str(certs.ca), "get", "k"],
                   {}) == cli.EXIT_FAILURE  # fmt: skip
    err = capsys.readouterr().err
    assert "requires a client certificate" in err, err
    # A client certificate from a CA the nodes do not trust.
    assert certs.foreign_node2 is not None
    foreign = [str(p) for p in certs.foreign_node2]
    assert cli.run(["--endpoints", endpoints, "--cacert", str(certs.ca), "--cert", foreign[0],
                    "--key", foreign[1], "get", "k"], {}) == cli.EXIT_FAILURE  # fmt: skip
    err = capsys.readouterr().err
    assert "does not trust this client's certificate" in err, err
    # Plain http:// to the HTTPS port: a definite 400, nothing more read.
    plain = endpoints.replace("https://", "http://")
    assert cli.run(["--endpoints", plain, "get", "k"], {}) == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert "use an https:// URL" in err, err
    assert "https_required" in err, err
    # The Python client says the same, as a TlsError.
    with Client(endpoints) as client, pytest.raises(TlsError, match="--cacert"):
        client.get("k")


async def test_a_peer_cannot_speak_as_a_member_its_certificate_does_not_name(
    cluster: ProcCluster, certs: Certs
) -> None:
    url = cluster.url("node1")

    def as_peer(pair: tuple[Path, Path] | None) -> ssl.SSLContext:
        assert pair is not None
        return peer_client_context(pair[0], pair[1], certs.ca)

    # The cluster speaks member ids (one per incarnation) under its cluster id.
    status = await cluster.status("node1")
    assert status is not None
    ids = {name: m["member_id"] for name, m in status["members"].items()}

    async def probe(local: str, tls: ssl.SSLContext | None, peer: str = "node1") -> str:
        answer = await probe_peer(url, token=None, local=ids[local], peer=ids[peer], tls=tls,
                                  cluster_id=status["cluster_id"])  # fmt: skip
        return answer.authenticated_by

    # node3's certificate, claiming to be node2: refused by the handshake.
    with pytest.raises(HandshakeError) as refused:
        await probe("node2", as_peer(certs.nodes["node3"]))
    assert refused.value.code == "identity"
    assert "names" in refused.value.message
    assert "node3" in refused.value.message
    # A certificate of the client CA that names node2 is no peer credential.
    with pytest.raises(HandshakeError) as refused:
        await probe("node2", as_peer(certs.client_named_node2))
    assert refused.value.code == "identity"
    assert "not issued by the cluster CA" in refused.value.message
    # A certificate for node2 from another CA: the TLS handshake itself fails.
    with pytest.raises((trio.BrokenResourceError, HandshakeError)):
        await probe("node2", as_peer(certs.foreign_node2))
    # A plaintext peer: refused before the node reads its HELLO.
    with pytest.raises(HandshakeError) as refused:
        await probe("node2", None)
    assert refused.value.code == "tls_required"
    # The dialer checks the other way: node1's certificate does not name node3.
    with pytest.raises(HandshakeError) as refused:
        await probe("node2", as_peer(certs.nodes["node2"]), peer="node3")
    assert refused.value.code == "identity"
    # The positive control: node2's own certificate may speak as node2.
    assert await probe("node2", as_peer(certs.nodes["node2"])) == "tls"
    # Nothing of that hurt the cluster.
    await cluster.put("still", "fine")


async def test_the_course_routes_need_a_cluster_certificate_naming_the_sender(
    cluster: ProcCluster, certs: Certs
) -> None:
    vote = {"term": 0, "candidateId": "node2", "lastLogIndex": 0, "lastLogTerm": 0}

    async def post(pair: tuple[Path, Path] | None) -> httpx.Response:
        assert pair is not None
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        ctx.load_cert_chain(*pair)
        async with httpx.AsyncClient(verify=ctx, trust_env=False) as http:
            return await http.post(cluster.url("node1") + "/raft/request-vote", json=vote)

    resp = await post(certs.nodes["node3"])
    assert (resp.status_code, resp.json()["code"]) == (403, "identity"), resp.text
    resp = await post(certs.client)  # a client certificate: a client, not a peer
    assert (resp.status_code, resp.json()["code"]) == (403, "tls_required"), resp.text
    resp = await post(certs.nodes["node2"])  # the positive control
    assert resp.status_code == 200, resp.text
    assert resp.json()["voteGranted"] is False  # term 0: refused, harmlessly
