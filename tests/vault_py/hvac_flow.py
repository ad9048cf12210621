"""The PKI flow of a Vault user, with the PyPI hvac client unmodified,
against trustmesh's /v1/<mount>/ API: create a role, issue a certificate
with a key the server makes, sign a CSR made with `cryptography`, read a
certificate by serial, list certificates, revoke, fetch the CRL, the CA and
the CA chain, delete the role.

Environment: VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT, OUT (a directory).
Writes into OUT what openssl checks afterwards (issued.pem, signed.pem,
chain.pem, ca.pem, crl.pem, result.json); prints "ok" and exits 0, or raises.
"""
import json
import time

import hvac
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from common import MOUNT, cert, client, common_name, csr, spki, vault_serial, write

ROLE = "web-clients"


def main():
    pki = client().secrets.pki

    # A role: EC P-256, client-auth only, names under clients.example.org.
    pki.create_or_update_role(
        ROLE,
        extra_params={
            "key_type": "ec", "key_bits": 256, "ttl": "1h", "max_ttl": "24h",
            "allowed_domains": ["clients.example.org"], "allow_subdomains": True,
            "server_flag": False, "client_flag": True,
        },
        mount_point=MOUNT,
    )
    role = pki.read_role(ROLE, mount_point=MOUNT)["data"]
    assert role["key_type"] == "ec" and role["key_bits"] == 256, role
    assert role["ttl"] == 3600 and role["max_ttl"] == 86400, role
    assert role["client_flag"] is True and role["server_flag"] is False, role
    assert ROLE in pki.list_roles(mount_point=MOUNT)["data"]["keys"]

    # issue: the server makes the key.
    issued = pki.generate_certificate(ROLE, "api.clients.example.org", extra_params={"ttl": "30m"},
                                      mount_point=MOUNT)["data"]
    leaf = cert(issued["certificate"])
    key = serialization.load_pem_private_key(issued["private_key"].encode(), None)
    assert issued["private_key_type"] == "ec", issued["private_key_type"]
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert spki(key.public_key()) == spki(leaf.public_key()), "the key is the certificate's"
    assert common_name(leaf) == "api.clients.example.org"
    assert issued["serial_number"] == vault_serial(leaf), (issued["serial_number"], vault_serial(leaf))
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH], list(eku)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 1800 <= lifetime.total_seconds() <= 1800 + 60, lifetime
    assert issued["issuing_ca"] == issued["ca_chain"][0], "the chain starts with the issuer"
    assert abs(issued["expiration"] - leaf.not_valid_after_utc.timestamp()) < 1

    # sign: a CSR made with cryptography, the key stays here.
    csr_key = ec.generate_private_key(ec.SECP256R1())
    signed = pki.sign_certificate(ROLE, csr(csr_key, "batch.clients.example.org"), "batch.clients.example.org",
                                  mount_point=MOUNT)["data"]
    signed_leaf = cert(signed["certificate"])
    assert spki(signed_leaf.public_key()) == spki(csr_key.public_key())
    assert "private_key" not in signed
    dns = signed_leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert dns.get_values_for_type(x509.DNSName) == ["batch.clients.example.org"], "the CN is a DNS SAN, as in Vault"

    # Read by serial, list.
    read = pki.read_certificate(issued["serial_number"], mount_point=MOUNT)["data"]
    assert cert(read["certificate"]) == leaf and read["revocation_time"] == 0, read
    keys = pki.list_certificates(mount_point=MOUNT)["data"]["keys"]
    assert issued["serial_number"] in keys and signed["serial_number"] in keys, keys

    # Revoke: the serial is in the CRL the answer's time later.
    revoked = pki.revoke_certificate(issued["serial_number"], mount_point=MOUNT)["data"]
    assert revoked["revocation_time"] >= int(time.time()) - 5, revoked
    again = pki.revoke_certificate(issued["serial_number"], mount_point=MOUNT)["data"]
    assert again["revocation_time"] == revoked["revocation_time"], "revoking twice changes nothing"
    read = pki.read_certificate(issued["serial_number"], mount_point=MOUNT)["data"]
    assert read["revocation_time"] == revoked["revocation_time"], read
    crl_pem = pki.read_crl(mount_point=MOUNT)
    crl = x509.load_pem_x509_crl(crl_pem.encode())
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(signed_leaf.serial_number) is None

    # The CA and its chain.
    ca_pem = pki.read_ca_certificate(mount_point=MOUNT)
    chain_pem = pki.read_ca_certificate_chain(mount_point=MOUNT)
    assert cert(ca_pem).subject == leaf.issuer
    assert crl.is_signature_valid(cert(ca_pem).public_key())

    # The server makes RSA, EC P-384 and Ed25519 keys as the role says.
    for key_type, bits, check in [
        ("rsa", 2048, lambda k: isinstance(k, rsa.RSAPrivateKey) and k.key_size == 2048),
        ("ec", 384, lambda k: isinstance(k, ec.EllipticCurvePrivateKey) and k.curve.name == "secp384r1"),
        ("ed25519", 0, lambda k: isinstance(k, ed25519.Ed25519PrivateKey)),
    ]:
        pki.create_or_update_role(f"keys-{key_type}", extra_params={
            "key_type": key_type, "key_bits": bits, "allow_any_name": True,
        }, mount_point=MOUNT)
        made = pki.generate_certificate(f"keys-{key_type}", f"{key_type}.example.org", mount_point=MOUNT)["data"]
        key = serialization.load_pem_private_key(made["private_key"].encode(), None)
        assert made["private_key_type"] == key_type and check(key), (key_type, made["private_key_type"])
        assert spki(key.public_key()) == spki(cert(made["certificate"]).public_key())

    # A certificate with a SPIFFE ID is an SVID of the mesh (Services CA);
    # revoking it through this API is the mesh's revocation.
    pki.create_or_update_role("mesh", extra_params={
        "key_type": "ec", "allowed_uri_sans": "spiffe://example.org/web/*", "require_cn": False,
    }, mount_point=MOUNT)
    svid = pki.generate_certificate("mesh", "", extra_params={"uri_sans": "spiffe://example.org/web/1"},
                                    mount_point=MOUNT)["data"]
    uris = cert(svid["certificate"]).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/web/1"]
    assert common_name(cert(svid["issuing_ca"])) == "trustmesh Services CA"
    pki.revoke_certificate(svid["serial_number"], mount_point=MOUNT)

    # Delete the role: reading it is a 404 (hvac's InvalidPath).
    pki.delete_role(ROLE, mount_point=MOUNT)
    try:
        pki.read_role(ROLE, mount_point=MOUNT)
        raise AssertionError("the deleted role is still there")
    except hvac.exceptions.InvalidPath:
        pass

    write("issued.pem", issued["certificate"])
    write("signed.pem", signed["certificate"])
    write("chain.pem", chain_pem)
    write("ca.pem", ca_pem)
    write("crl.pem", crl_pem)
    write("result.json", json.dumps({
        "revoked": issued["serial_number"], "signed": signed["serial_number"], "svid": svid["serial_number"],
    }))
    print("ok")


if __name__ == "__main__":
    main()
