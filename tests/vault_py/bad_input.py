"""Bad input to trustmesh's PKI API, as a Vault client sends it: each call
is refused with Vault's status code and an {"errors": [...]} body that says
what is wrong, and nothing is issued.

Environment: VAULT_ADDR, VAULT_TOKEN (admin), VAULT_CACERT, NODE_TOKEN (a
node token whose policy allows only the role "tenant-client"),
SINGLE_USE_TOKEN (a single-use node token of the same node), OUT.
Prints "ok" and exits 0, or raises.
"""
import json
import os

import hvac
import requests
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from common import MOUNT, cert, client, csr, tampered, write

ROLE = "web"
TENANT = "tenant-client"


def refused(call, exception, *needles):
    """`call` raises hvac's `exception`, whose errors name every needle."""
    try:
        call()
    except exception as e:
        text = " ".join(e.errors or []) if hasattr(e, "errors") else str(e)
        for needle in needles:
            assert needle.lower() in text.lower(), f"{needle!r} not in {text!r}"
        return text
    raise AssertionError(f"{call} was not refused with {exception.__name__}")


def raw(method, path, body=None, token=None, headers=None):
    """A request hvac would not send: any method, any body."""
    h = {"X-Vault-Token": os.environ["VAULT_TOKEN"] if token is None else token}
    h.update(headers or {})
    url = os.environ["VAULT_ADDR"] + path
    return requests.request(method, url, data=body, headers=h, verify=os.environ["VAULT_CACERT"], timeout=30)


def errors_of(response):
    body = response.json()
    assert list(body) == ["errors"], body
    return " ".join(body["errors"])


def main():
    admin = client().secrets.pki
    admin.create_or_update_role(ROLE, extra_params={
        "key_type": "ec", "ttl": "1h", "max_ttl": "2h", "allowed_domains": "example.org",
        "allow_subdomains": True, "allow_ip_sans": False,
        "allowed_uri_sans": "spiffe://example.org/web/*",
    }, mount_point=MOUNT)
    admin.create_or_update_role(TENANT, extra_params={
        "key_type": "any", "allowed_domains": "tenant-*", "allow_glob_domains": True,
        "server_flag": False,
    }, mount_point=MOUNT)
    issue = lambda role, cn, **extra: admin.generate_certificate(role, cn, extra_params=extra, mount_point=MOUNT)
    sign = lambda role, pem, cn="": admin.sign_certificate(role, pem, cn, mount_point=MOUNT)
    InvalidRequest, Forbidden, InvalidPath = (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden,
                                              hvac.exceptions.InvalidPath)

    # Unknown role, names the role does not allow.
    refused(lambda: issue("nope", "a.example.org"), InvalidRequest, "unknown role: nope")
    refused(lambda: issue(ROLE, "a.example.com"), InvalidRequest, "common name", "not allowed by this role")
    refused(lambda: issue(ROLE, "a.example.org", alt_names="b.evil.org"), InvalidRequest, "b.evil.org", "not allowed")
    refused(lambda: issue(ROLE, "a.example.org", ip_sans="10.0.0.1"), InvalidRequest, "IP Subject Alternative Names")
    refused(lambda: issue(ROLE, "a.example.org", uri_sans="spiffe://example.org/db/1"), InvalidRequest, "not allowed")
    refused(lambda: issue(ROLE, "a.example.org", uri_sans="spiffe://other.org/web/1"), InvalidRequest)
    refused(lambda: issue(ROLE, "a.example.org", other_sans="1.3.6.1.4.1.311.20.2.3;utf8:x"), InvalidRequest,
            "other_sans")
    refused(lambda: issue(TENANT, "tenant-acme"), InvalidRequest, "only for signing CSRs")

    # A lifetime above max_ttl is clamped to it, with Vault's warning.
    clamped = issue(ROLE, "long.example.org", ttl="48h")
    assert any("maxTTL is being used" in w for w in clamped["warnings"]), clamped["warnings"]
    leaf = cert(clamped["data"]["certificate"])
    lifetime = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()
    assert lifetime <= 2 * 3600 + 60, lifetime

    # Tokens: missing, wrong, one whose policy forbids the role, a replayed single-use one.
    for token in ["", "not-a-token", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9."]:
        refused(lambda: client(token).secrets.pki.generate_certificate(ROLE, "a.example.org", mount_point=MOUNT),
                Forbidden, "permission denied")
    node = client(os.environ["NODE_TOKEN"]).secrets.pki
    refused(lambda: node.generate_certificate(ROLE, "a.example.org", mount_point=MOUNT), Forbidden,
            "use_profile")
    refused(lambda: node.create_or_update_role(TENANT, extra_params={}, mount_point=MOUNT), Forbidden)
    allowed = node.sign_certificate(TENANT, csr(ec.generate_private_key(ec.SECP256R1()), "tenant-acme"), "",
                                    mount_point=MOUNT)
    assert "certificate" in allowed["data"], "the node may use its own role"
    once = client(os.environ["SINGLE_USE_TOKEN"]).secrets.pki
    tenant_csr = csr(ec.generate_private_key(ec.SECP256R1()), "tenant-once")
    once.sign_certificate(TENANT, tenant_csr, "", mount_point=MOUNT)
    refused(lambda: once.sign_certificate(TENANT, tenant_csr, "", mount_point=MOUNT), Forbidden, "already used")

    # Bodies: not JSON, not an object, too large.
    r = raw("POST", f"/v1/{MOUNT}/issue/{ROLE}", b'{"common_name": "a.example.org"')
    assert r.status_code == 400 and "failed to parse JSON" in errors_of(r), (r.status_code, r.text)
    r = raw("POST", f"/v1/{MOUNT}/issue/{ROLE}", b'["a.example.org"]')
    assert r.status_code == 400 and "not a JSON object" in errors_of(r), (r.status_code, r.text)
    big = json.dumps({"common_name": "a.example.org", "alt_names": "x" * (300 * 1024)}).encode()
    r = raw("POST", f"/v1/{MOUNT}/issue/{ROLE}", big)
    assert r.status_code == 413 and "larger than" in errors_of(r), (r.status_code, r.text)
    r = raw("POST", f"/v1/{MOUNT}/revoke", b"{}")
    assert r.status_code == 400 and "serial_number" in errors_of(r), (r.status_code, r.text)
    r = raw("POST", f"/v1/{MOUNT}/revoke", json.dumps({"serial_number": "7f:00:01"}).encode())
    assert r.status_code == 400 and "no certificate" in errors_of(r), (r.status_code, r.text)
    r = raw("POST", f"/v1/{MOUNT}/revoke", json.dumps({"serial_number": "zz:top"}).encode())
    assert r.status_code == 400, (r.status_code, r.text)

    # CSRs: weak and unknown keys, a broken proof of possession, the wrong key type.
    weak = [
        (rsa.generate_private_key(65537, 1024), "at least 2048 bits"),
        (ec.generate_private_key(ec.SECP521R1()), "P-256 and P-384"),
        (ec.generate_private_key(ec.SECP256K1()), "P-256 and P-384"),
        (dsa.generate_private_key(2048), "unknown public key algorithm"),
    ]
    for key, needle in weak:
        refused(lambda: sign(TENANT, csr(key, "tenant-weak")), InvalidRequest, needle)
    rsa_csr = csr(rsa.generate_private_key(65537, 2048), "a.example.org")
    refused(lambda: sign(ROLE, rsa_csr), InvalidRequest, "this role requires an EC P-256 key")
    ed_csr = csr(ed25519.Ed25519PrivateKey.generate(), "tenant-ed")
    assert "certificate" in sign(TENANT, ed_csr)["data"], "Ed25519 is accepted"
    broken = tampered(csr(ec.generate_private_key(ec.SECP256R1()), "tenant-x"))
    refused(lambda: sign(TENANT, broken), InvalidRequest, "proof of possession")
    refused(lambda: sign(TENANT, "not a csr"), InvalidRequest, "csr")

    # Unknown paths and methods.
    for path in [f"/v1/{MOUNT}/nope", f"/v1/{MOUNT}/issue/a/b", "/v1/other_mount/issue/web", "/v1/sys/health"]:
        r = raw("GET", path)
        assert r.status_code == 404 and "unsupported path" in errors_of(r), (path, r.status_code, r.text)
    for method, path in [("DELETE", f"/v1/{MOUNT}/issue/{ROLE}"), ("GET", f"/v1/{MOUNT}/revoke"),
                         ("PATCH", f"/v1/{MOUNT}/roles/{ROLE}"), ("POST", f"/v1/{MOUNT}/certs")]:
        r = raw(method, path)
        assert r.status_code == 405 and "unsupported operation" in errors_of(r), (method, path, r.status_code, r.text)
    r = raw("GET", f"/v1/{MOUNT}/cert/7f:00:01")
    assert r.status_code == 404 and r.json() == {"errors": []}, (r.status_code, r.text)
    r = raw("GET", f"/v1/{MOUNT}/roles/none")
    assert r.status_code == 404 and r.json() == {"errors": []}, (r.status_code, r.text)

    write("bad_input.json", json.dumps({"done": True}))
    print("ok")


if __name__ == "__main__":
    main()
