#!/bin/sh
# Make a cluster CA and one certificate per node, for trioraft on TLS
# (docs/security.md#tls). For development and small deployments; use your own
# PKI where you have one. Needs OpenSSL 1.1.1 or newer.
#
#   compose/make-certs.sh DIR [NODES] [EXTRA_NAME ...]
#
# DIR/ca.pem, DIR/ca-key.pem    the cluster CA (kept and reused if DIR has one)
# DIR/nodeK.pem, nodeK-key.pem  node K's certificate and key, K = 1..NODES (3)
#
# Every node certificate names the node (DNS:nodeK: what its peers check),
# localhost and 127.0.0.1 (what clients on the host check), and any
# EXTRA_NAME given (DNS names, or IP:a.b.c.d); it may serve and authenticate as
# a client (serverAuth, clientAuth), as a node does both towards its peers.
# This is the layout `trioraft cluster --tls-dir DIR` and
# compose/docker-compose.tls.yml use.
set -eu

dir=${1:?usage: make-certs.sh DIR [NODES] [EXTRA_NAME ...]}
nodes=${2:-3}
[ "$#" -ge 2 ] && shift 2 || shift "$#"
days=${DAYS:-825}
extra=""
for name in "$@"; do
    case "$name" in
        IP:*) extra="$extra,$name" ;;
        *) extra="$extra,DNS:$name" ;;
    esac
done

mkdir -p "$dir"
cd "$dir"
umask 077
if [ ! -f ca.pem ]; then
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout ca-key.pem -out ca.pem -days 3650 -subj "/CN=trioraft cluster CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
i=1
while [ "$i" -le "$nodes" ]; do
    n="node$i"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$n-key.pem" -out "$n.csr" -subj "/CN=$n" 2>/dev/null
    {
        echo "subjectAltName=DNS:$n,DNS:localhost,IP:127.0.0.1$extra"
        echo "extendedKeyUsage=serverAuth,clientAuth"
        echo "keyUsage=critical,digitalSignature"
        echo "basicConstraints=critical,CA:FALSE"
    } > "$n.ext"
    openssl x509 -req -in "$n.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -out "$n.pem" -days "$days" -extfile "$n.ext" 2>/dev/null
    rm -f "$n.csr" "$n.ext"
    i=$((i + 1))
done
# Certificates and node keys readable by the containers' user (uid 10001,
# compose/Dockerfile), which is not root: keep DIR itself private. The CA key
# stays 0600 (nodes never need it).
chmod 0644 ca.pem node*.pem
echo "made $dir/ca.pem and $nodes node certificates in $dir"
