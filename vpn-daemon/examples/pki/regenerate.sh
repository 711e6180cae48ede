#!/bin/sh
# Recreates the EXAMPLE PKI in this directory (see README.md): an ECDSA P-256 CA, a server
# certificate for site-a, a client certificate for site-b, an empty CRL and two OpenVPN static
# keys. Everything is valid for 100 years so that the examples and tests never expire.
# These keys are published: never use them for a real deployment.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
days=36500

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"
}

# CA
new_key "$here/ca.key"
openssl req -new -x509 -key "$here/ca.key" -out "$here/ca.crt" -days "$days" -sha256 \
    -subj "/CN=vpn-daemon example CA" \
    -addext "basicConstraints=critical,CA:true" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash"

# Leaf certificates: site-a is a TLS server, site-b a TLS client.
issue() { # name extendedKeyUsage
    new_key "$here/$1.key"
    openssl req -new -key "$here/$1.key" -out "$work/$1.csr" -subj "/CN=$1"
    cat > "$work/$1.ext" <<EXT
basicConstraints=critical,CA:false
keyUsage=critical,digitalSignature,keyAgreement
extendedKeyUsage=$2
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
    openssl x509 -req -in "$work/$1.csr" -CA "$here/ca.crt" -CAkey "$here/ca.key" \
        -CAcreateserial -CAserial "$work/ca.srl" -out "$here/$1.crt" -days "$days" -sha256 \
        -extfile "$work/$1.ext"
}
issue site-a serverAuth
issue site-b clientAuth

# Empty CRL: `openssl ca` wants a database, which lives in the temp dir.
touch "$work/index.txt"
echo 01 > "$work/crlnumber"
cat > "$work/ca.cnf" <<CNF
[ca]
default_ca = example_ca
[example_ca]
database = $work/index.txt
crlnumber = $work/crlnumber
default_md = sha256
default_crl_days = $days
CNF
openssl ca -batch -config "$work/ca.cnf" -gencrl -keyfile "$here/ca.key" -cert "$here/ca.crt" \
    -out "$here/crl.pem"

# OpenVPN static keys (tls-crypt and tls-auth): 256 random bytes as 16 lines of 32 hex digits.
static_key() {
    if command -v openvpn >/dev/null 2>&1; then
        openvpn --genkey secret "$1"
    else
        {
            echo "#"
            echo "# 2048 bit OpenVPN static key"
            echo "#"
            echo "-----BEGIN OpenVPN Static key V1-----"
            openssl rand -hex 256 | fold -w 32
            echo "-----END OpenVPN Static key V1-----"
        } > "$1"
    fi
}
static_key "$here/tc.key"
static_key "$here/ta.key"

chmod 600 "$here"/*.key
echo "example PKI regenerated in $here"
