"""Certificates made at test time (trustme: python-trio's test CA library); nothing
about them is committed.

- the cluster CA issues node1..node3 (names: the node name, 127.0.0.1, localhost),
  an expired node1 and a bare-CN node1;
- a separate client CA issues the client certificate ``alice``, one that
  *names* ``node2`` (a client certificate is never a peer credential, whatever
  it names), and ``public``, a server certificate for 127.0.0.1 (the
  client-facing certificate of nodes whose peer certificate is another);
- a foreign CA issues another ``node2``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme  # the [test] extra: missing, the TLS tests fail (never skip silently)

NODES = ("node1", "node2", "node3")
Pair = tuple[Path, Path]


@dataclass
class Certs:
    dir: Path
    ca: Path
    client_ca: Path
    nodes: dict[str, Pair] = field(default_factory=dict)
    client: Pair | None = None
    client_named_node2: Pair | None = None
    foreign_node2: Pair | None = None
    expired_node1: Pair | None = None
    cn_node1: Pair | None = None
    public: Pair | None = None

    def pair(self, name: str) -> Pair:
        value = self.nodes.get(name) or getattr(self, name)
        assert value is not None
        return value


def _write(leaf: trustme.LeafCert, directory: Path, name: str) -> Pair:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("certs")
    cluster_ca, client_ca, foreign_ca = trustme.CA(), trustme.CA(), trustme.CA()
    out = Certs(directory, directory / "ca.pem", directory / "client-ca.pem")
    cluster_ca.cert_pem.write_to_path(str(out.ca))
    client_ca.cert_pem.write_to_path(str(out.client_ca))
    for name in NODES:
        out.nodes[name] = _write(cluster_ca.issue_cert(name, "127.0.0.1", "localhost"),
                                 directory, name)  # fmt: skip
    out.client = _write(client_ca.issue_cert("alice"), directory, "alice")
    out.client_named_node2 = _write(client_ca.issue_cert("node2"), directory, "client-node2")
    out.foreign_node2 = _write(foreign_ca.issue_cert("node2", "127.0.0.1"), directory,
                               "foreign-node2")  # fmt: skip
    out.expired_node1 = _write(
        cluster_ca.issue_cert("node1", "127.0.0.1",
                              not_after=datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)),
        directory, "expired-node1",
    )  # fmt: skip
    out.cn_node1 = _write(cluster_ca.issue_cert(common_name="node1"), directory, "cn-node1")
    out.public = _write(client_ca.issue_cert("127.0.0.1", "localhost"), directory, "public")
    return out
