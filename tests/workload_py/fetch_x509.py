"""py-spiffe fetches the X.509 context from trustmesh's Workload API and
verifies the default SVID's chain against the fetched bundle.

Usage: SPIFFE_ENDPOINT_SOCKET=unix:///path fetch_x509.py EXPECTED_SPIFFE_ID
Prints "ok x509 ..." and exits 0, or raises (exit 1).
"""
import sys

from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient


def public_der(key):
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def main():
    expected = sys.argv[1]
    with WorkloadApiClient(default_timeout=20) as client:
        ctx = client.fetch_x509_context()
        svid = ctx.default_svid
        assert str(svid.spiffe_id) == expected, f"default SVID is {svid.spiffe_id}, expected {expected}"
        bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        assert bundle is not None, "no bundle for the SVID's trust domain"
        chain = svid.cert_chain
        for child, parent in zip(chain, chain[1:]):
            child.verify_directly_issued_by(parent)
        top = chain[-1]
        anchors = [a for a in bundle.x509_authorities if a.subject == top.issuer]
        assert anchors, "the chain's issuer is not in the bundle"
        top.verify_directly_issued_by(anchors[0])
        assert public_der(svid.private_key.public_key()) == public_der(svid.leaf.public_key()), "key does not match leaf"
        bundles = client.fetch_x509_bundles()
        assert bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain) is not None
        ids = sorted(str(s.spiffe_id) for s in ctx.x509_svids)
        print("ok x509", len(chain), "certs;", " ".join(ids), flush=True)


if __name__ == "__main__":
    main()
