"""py-spiffe follows the X.509 context stream through a CA rotation and
prints one line per update: "update", the SHA-256 fingerprints (hex) of the
trust bundle's CAs, comma separated and sorted, then the fingerprint of the
CA that signed each SVID (the chain's second certificate).

Usage: SPIFFE_ENDPOINT_SOCKET=unix:///path stream_rotation.py TRUST_DOMAIN
Exits 0 once an SVID is signed by a CA that was not in the first bundle,
1 on an error or after 60 s without one.
"""
import sys
import threading

from cryptography.hazmat.primitives import hashes
from spiffe import TrustDomain, WorkloadApiClient


def fingerprint(cert):
    return cert.fingerprint(hashes.SHA256()).hex()


def main():
    td = TrustDomain(sys.argv[1])
    first_bundle = []
    done = threading.Event()
    failure = []

    def on_success(ctx):
        bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(td)
        cas = sorted(fingerprint(c) for c in bundle.x509_authorities) if bundle else []
        issuers = [fingerprint(s.cert_chain[1]) if len(s.cert_chain) > 1 else "-" for s in ctx.x509_svids]
        print("update", ",".join(cas), " ".join(issuers), flush=True)
        if not first_bundle:
            first_bundle.append(set(cas))
        elif any(i not in first_bundle[0] for i in issuers):
            done.set()

    def on_error(err):
        failure.append(err)
        done.set()

    with WorkloadApiClient() as client:
        handler = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
        finished = done.wait(60)
        handler.cancel()
    if failure:
        print("error", failure[0], flush=True)
        sys.exit(1)
    if not finished:
        print("error no SVID of a new CA within 60 s", flush=True)
        sys.exit(1)
    print("ok", flush=True)


if __name__ == "__main__":
    main()
