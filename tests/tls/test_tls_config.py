"""The TLS flags of `trioraft serve` (and their environment forms), the checks made before
a node starts, and the pieces of trioraft.tls that decide who a certificate names."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.tls.conftest import Certs
from trioraft.config import ConfigError, NodeConfig, build_serve_parser, config_from_args
from trioraft.config import peer_authentication as peer_auth
from trioraft.tls import (
    ServerTls,
    TlsPeer,
    certificate_names,
    identity_error,
    load_ca_bundle,
    static_name_of,
    tls_peer_of,
)
from trioraft.transport import peer_address


def parse(*argv: str, env: dict[str, str] | None = None) -> NodeConfig:
    return config_from_args(build_serve_parser().parse_args(list(argv)), env or {})


def node_flags(certs: Certs, name: str = "node1") -> list[str]:
    cert, key = certs.nodes[name]
    return ["--id", name, "--tls-cert", str(cert), "--tls-key", str(key),
            "--tls-ca", str(certs.ca)]  # fmt: skip


def test_tls_flags_and_their_defaults(certs: Certs) -> None:
    config = parse(*node_flags(certs), "--peer", "node2=https://h2:3000")
    cert, key = certs.nodes["node1"]
    assert (config.tls_cert, config.tls_key, config.tls_ca) == (cert, key, certs.ca)
    assert config.https
    # The peer certificate defaults to the node's, the cluster CA to --tls-ca.
    assert config.peer_tls_files == (cert, key, certs.ca)
    assert config.advertise_url == "https://node1:3000"
    assert peer_auth(config) == "peer TLS"


def test_every_tls_flag_has_an_environment_form(certs: Certs) -> None:
    cert, key = certs.nodes["node1"]
    other, other_key = certs.nodes["node2"]
    env = {"NODE_ID": "node1", "TLS_CERT": str(other), "TLS_KEY": str(other_key),
           "TLS_CLIENT_CA": str(certs.client_ca), "TLS_CA": str(certs.ca),
           "PEER_TLS_CERT": str(cert), "PEER_TLS_KEY": str(key), "PEER_TLS_CA": str(certs.ca),
           "PEER_IDS": "node2:3000"}  # fmt: skip
    config = parse(env=env)
    assert config.tls_cert == other
    assert config.tls_client_ca == certs.client_ca
    assert config.peer_tls_files == (cert, key, certs.ca)
    assert config.peers == {"node2": "https://node2:3000"}  # the course form follows TLS
    # A flag wins over its variable.
    assert parse("--tls-client-ca", str(certs.ca), env=env).tls_client_ca == certs.ca


def test_peer_tls_is_peer_authentication_for_a_non_loopback_listen(certs: Certs) -> None:
    config = parse(*node_flags(certs), "--listen", "0.0.0.0:3000")
    assert config.listen_host == "0.0.0.0"
    config = parse(*node_flags(certs), "--listen", "0.0.0.0:3000", "--cluster-token", "t")
    assert peer_auth(config) == "cluster token and peer TLS"
    # HTTPS for clients alone does not authenticate peers.
    cert, key = certs.nodes["node1"]
    with pytest.raises(ConfigError, match="without peer authentication"):
        parse("--listen", "0.0.0.0:3000", "--tls-cert", str(cert), "--tls-key", str(key))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{node1}"], "--tls-cert needs --tls-key"),
        (["--peer-tls-key", "{node1_key}", "--tls-ca", "{ca}"],
         "--peer-tls-key needs --peer-tls-cert"),
        (["--tls-client-ca", "{ca}"], "--tls-client-ca needs --tls-cert"),
        (["--tls-ca", "{ca}"], "needs this node's peer certificate"),
        (["--peer-tls-cert", "{node1}", "--peer-tls-key", "{node1_key}"],
         "needs the cluster CA"),
        (["--tls-cert", "{node1}", "--tls-key", "{node2_key}"], "KEY_VALUES_MISMATCH"),
        (["--tls-cert", "{missing}", "--tls-key", "{node1_key}"], "No such file"),
        (["--tls-cert", "{node1}", "--tls-key", "{node1_key}", "--tls-ca", "{missing}"],
         "cannot load CA"),
        (["--tls-cert", "{node2}", "--tls-key", "{node2_key}", "--tls-ca", "{ca}"],
         "names localhost, node2, not this node"),
        (["--tls-cert", "{expired}", "--tls-key", "{expired_key}", "--tls-ca", "{ca}"],
         "certificate has expired"),
        (["--tls-cert", "{foreign}", "--tls-key", "{foreign_key}", "--tls-ca", "{ca}"],
         "not accepted by the cluster CA"),
        (["--tls-cert", "{node1}", "--tls-key", "{node1_key}", "--advertise", "http://x:1"],
         "so its URL is https://"),
    ],
)  # fmt: skip
def test_unusable_tls_settings_are_refused_before_start(
    certs: Certs, tmp_path: Path, flags: list[str], message: str
) -> None:
    assert certs.expired_node1 is not None
    assert certs.foreign_node2 is not None
    files: dict[str, Any] = {
        "node1": certs.nodes["node1"][0], "node1_key": certs.nodes["node1"][1],
        "node2": certs.nodes["node2"][0], "node2_key": certs.nodes["node2"][1],
        "ca": certs.ca, "missing": tmp_path / "missing.pem",
        "expired": certs.expired_node1[0], "expired_key": certs.expired_node1[1],
        "foreign": certs.foreign_node2[0], "foreign_key": certs.foreign_node2[1],
    }  # fmt: skip
    argv = ["--id", "node1", *[f.format(**files) for f in flags]]
    with pytest.raises(ConfigError, match=message):
        parse(*argv)


def test_a_peer_url_may_be_https() -> None:
    assert peer_address("https://node2.example:3000") == ("node2.example", 3000)
    assert peer_address("https://node2.example") == ("node2.example", 443)
    assert peer_address("http://node2.example") == ("node2.example", 80)
    with pytest.raises(ValueError, match="a peer URL is"):
        peer_address("ftp://node2:1")


def test_a_certificate_is_named_by_its_dns_and_uri_names_else_its_cn() -> None:
    cert = {"subject": ((("commonName", "ignored"),),),
            "subjectAltName": (("DNS", "node1"), ("URI", "spiffe://c/node1"),
                               ("IP Address", "127.0.0.1"))}  # fmt: skip
    assert certificate_names(cert) == {"node1", "spiffe://c/node1"}
    assert certificate_names({"subject": ((("commonName", "node1"),),)}) == {"node1"}
    assert certificate_names({"subjectAltName": (("IP Address", "10.0.0.1"),),
                              "subject": ((("commonName", "node1"),),)}) == {"node1"}
    assert certificate_names({}) == frozenset()
    assert certificate_names(None) == frozenset()


def test_identity_error_binds_a_certificate_to_a_member_name() -> None:
    node2 = TlsPeer(frozenset({"node2", "localhost"}), cluster_ca=True)
    assert identity_error(node2, "node2", static_name_of) is None
    assert "not 'node3'" in (identity_error(node2, "node3", static_name_of) or "")
    assert "no certificate" in (identity_error(None, "node2", static_name_of) or "")
    client = TlsPeer(frozenset({"node2"}), cluster_ca=False)
    assert "not issued by the cluster CA" in (identity_error(client, "node2", static_name_of)
                                               or "")  # fmt: skip
    # Member ids that are not names (a rejoined node): the mapping decides.
    names = {"a1b2": "node2"}.get
    assert identity_error(node2, "a1b2", names) is None
    assert "not a member" in (identity_error(node2, "zz", names) or "")


class _NoChain:
    """An SSLObject-like without a readable verified chain."""

    def getpeercert(self) -> dict[str, Any]:
        return {"subjectAltName": (("DNS", "node2"),)}


def test_a_certificate_without_a_readable_chain_is_not_the_cluster_cas(certs: Certs) -> None:
    """With a client CA trusted besides the cluster CA, only the verified chain says which
    one issued a certificate: without it, fail closed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    both = ServerTls(context, https=True, peer_tls=True,
                     cluster_cas=load_ca_bundle(certs.ca, "ca"), cluster_ca_only=False)  # fmt: skip
    assert tls_peer_of(_NoChain(), both) == TlsPeer(frozenset({"node2"}), cluster_ca=False)
    only = ServerTls(context, https=True, peer_tls=True, cluster_cas=both.cluster_cas,
                     cluster_ca_only=True)  # fmt: skip
    assert tls_peer_of(_NoChain(), only) == TlsPeer(frozenset({"node2"}), cluster_ca=True)
