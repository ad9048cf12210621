"""py-spiffe follows the X.509 context stream and prints one line per
update: "update N" and the SPIFFE IDs with their leaf serials (hex).

py-spiffe (0.3) drops the CRLs of X509SVIDResponse: its X509Context has
none. So after the last update the script reads the CRLs of the same server
with the Workload API stubs py-spiffe ships (spiffe._proto, generated from
workload.proto) and prints "crl" and the revoked serials (hex) that
`cryptography` decodes from the DER CRLs.

Usage: SPIFFE_ENDPOINT_SOCKET=unix:///path stream_x509_crl.py UPDATES
Exits 0 after UPDATES updates, 1 on an error or after 30 s without them.
"""
import os
import sys

import grpc
from cryptography import x509
from spiffe._proto import workload_pb2, workload_pb2_grpc
from stream_x509 import follow


def crl_serials():
    """The serials every CRL of one FetchX509SVID response lists."""
    with grpc.insecure_channel(os.environ["SPIFFE_ENDPOINT_SOCKET"]) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        responses = stub.FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=[("workload.spiffe.io", "true")], timeout=20
        )
        first = next(responses)
        responses.cancel()
    serials = []
    for der in first.crl:
        serials.extend(f"{r.serial_number:x}" for r in x509.load_der_x509_crl(der))
    return serials


def main():
    updates = follow(int(sys.argv[1]), numbered=True)
    print("crl", " ".join(crl_serials()), flush=True)
    print("ok stream", updates, flush=True)


if __name__ == "__main__":
    main()
