"""Seed 003 end to end: a multi-tenant service (the CMK API server) gets its
tenants' client certificates from trustmesh's PKI API on the mount
`pki_client_certs`, with hvac, as it did from OpenBao.

1. An operator (admin token) writes the tenant template: EC P-256,
   client-auth only, CN = the tenant's id, and a server template for the
   external keystore the tenants connect to.
2. The service (a node token that Cedar allows only these profiles and
   revocation) issues a tenant's certificate (`format=pem_bundle`).
3. Renewal well ahead of expiry: a second certificate for the same tenant
   while the first is valid.
4. The new certificate is tested before it is used: a TLS handshake with a
   keystore that requires client certificates from the mount's chain.
5. Then the old certificate is revoked: it is in the CRL, and a keystore
   that checks the CRL refuses it while it accepts the new one.

Environment: VAULT_ADDR, VAULT_TOKEN (admin), VAULT_CACERT, NODE_TOKEN, OUT.
Prints "ok" and exits 0, or raises.
"""
import json
import os
import socket
import ssl
import threading

from cryptography import x509

from common import cert, client, common_name, write

MOUNT = "pki_client_certs"
TENANT_ROLE = "openkcm-client-cert-role"
KEYSTORE_ROLE = "keystore-server"
TENANT = "tenant-acme-corp-12345"


def files(name, bundle):
    """Writes a pem_bundle (key, certificate, issuing CA) as key and chain files."""
    key_end = bundle.index("-----END PRIVATE KEY-----") + len("-----END PRIVATE KEY-----\n")
    write(f"{name}.key", bundle[:key_end])
    write(f"{name}.pem", bundle[key_end:])
    os.chmod(os.path.join(os.environ["OUT"], f"{name}.key"), 0o600)
    return os.path.join(os.environ["OUT"], f"{name}.pem"), os.path.join(os.environ["OUT"], f"{name}.key")


def handshake(server_ctx, client_cert, client_key):
    """One TLS connection to a keystore served with `server_ctx`; returns the
    CN the keystore saw, or the error that ended the handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen = {}

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                seen["cn"] = dict(x[0] for x in peer["subject"]).get("commonName")
                tls.sendall(b"pong")
        except (ssl.SSLError, OSError) as e:
            seen["error"] = str(e)
        finally:
            listener.close()

    thread = threading.Thread(target=serve)
    thread.start()
    ctx = ssl.create_default_context(cafile=os.path.join(os.environ["OUT"], "chain.pem"))
    ctx.load_cert_chain(client_cert, client_key)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="keystore.internal") as tls:
                assert tls.recv(4) == b"pong"
    except (ssl.SSLError, OSError, AssertionError) as e:
        seen.setdefault("error", str(e))
    thread.join(10)
    return seen


def keystore(ca_file, server_cert, server_key, crl_file=None):
    """A keystore's TLS context: client certificates required, from the
    mount's chain, checked against the CRLs in `crl_file` when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(server_cert, server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=ca_file)
    if crl_file is not None:
        ctx.load_verify_locations(cafile=crl_file)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def main():
    admin = client().secrets.pki
    admin.create_or_update_role(TENANT_ROLE, extra_params={
        "key_type": "ec", "key_bits": 256, "ttl": "2160h", "max_ttl": "2160h",
        "allowed_domains": ["tenant-*"], "allow_glob_domains": True,
        "server_flag": False, "client_flag": True, "key_usage": ["DigitalSignature"],
    }, mount_point=MOUNT)
    admin.create_or_update_role(KEYSTORE_ROLE, extra_params={
        "key_type": "ec", "allowed_domains": ["keystore.internal"], "allow_bare_domains": True,
        "client_flag": False,
    }, mount_point=MOUNT)
    server = admin.generate_certificate(KEYSTORE_ROLE, "keystore.internal", extra_params={"format": "pem_bundle"},
                                        mount_point=MOUNT)["data"]
    server_cert, server_key = files("keystore", server["certificate"])
    chain = admin.read_ca_certificate_chain(mount_point=MOUNT)
    write("chain.pem", chain)
    ca_file = os.path.join(os.environ["OUT"], "chain.pem")

    service = client(os.environ["NODE_TOKEN"]).secrets.pki
    request = {"format": "pem_bundle", "ttl": "2160h", "exclude_cn_from_sans": True}
    first = service.generate_certificate(TENANT_ROLE, TENANT, extra_params=dict(request), mount_point=MOUNT)["data"]
    first_cert, first_key = files("tenant-1", first["certificate"])
    old = cert(open(first_cert).read())
    assert common_name(old) == TENANT and first["private_key_type"] == "ec"
    eku = old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [u.dotted_string for u in eku] == ["1.3.6.1.5.5.7.3.2"], "client-auth only"
    uri = [e for e in old.extensions if isinstance(e.value, x509.SubjectAlternativeName)]
    assert not uri, "a tenant certificate carries no SAN at all (no SPIFFE ID, CN excluded)"
    assert handshake(keystore(ca_file, server_cert, server_key), first_cert, first_key).get("cn") == TENANT

    # Renewal ahead of expiry: a second certificate while the first is valid.
    second = service.generate_certificate(TENANT_ROLE, TENANT, extra_params=dict(request), mount_point=MOUNT)["data"]
    second_cert, second_key = files("tenant-2", second["certificate"])
    new = cert(open(second_cert).read())
    assert new.serial_number != old.serial_number and common_name(new) == TENANT
    assert new.not_valid_after_utc >= old.not_valid_after_utc

    # Test the new one before using it.
    seen = handshake(keystore(ca_file, server_cert, server_key), second_cert, second_key)
    assert seen.get("cn") == TENANT, seen

    # Then revoke the old one: it is in the CRL, and refused where the CRL is checked.
    service.revoke_certificate(first["serial_number"], mount_point=MOUNT)
    crl_pem = service.read_crl(mount_point=MOUNT)
    crl = x509.load_pem_x509_crl(crl_pem.encode())
    assert crl.get_revoked_certificate_by_serial_number(old.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(new.serial_number) is None
    write("crl.pem", crl_pem)
    crl_file = os.path.join(os.environ["OUT"], "crl.pem")
    checked = lambda: keystore(ca_file, server_cert, server_key, crl_file)
    refused = handshake(checked(), first_cert, first_key)
    assert "error" in refused and "cn" not in refused, refused
    assert handshake(checked(), second_cert, second_key).get("cn") == TENANT

    write("seed003.json", json.dumps({"old": first["serial_number"], "new": second["serial_number"]}))
    print("ok")


if __name__ == "__main__":
    main()
