#!/usr/bin/env python3
"""OpenBao `pki/revoke` latency as its revocation list grows (docs/benchmarks.md,
"Revocation"). Run by bench/revocation.sh against a dev server it configured.

Issues certificates with `pki/issue/<role>` (stored: the role has
no_store=false), then revokes them one at a time over one HTTP/1.1 keep-alive
connection, timing each `POST /v1/<mount>/revoke` (OpenBao rebuilds the CRL
inside the call unless `auto_rebuild` is set in `<mount>/config/crl`; the
default is off, so every revoke re-signs the whole CRL). Reports:

  * revoke latency p50/p99/max for the first --sample revocations (from 0);
  * the fill: revocations until --fill-seconds or --max-revoked, with the
    latency per window of --sample, so the growth is visible;
  * revoke latency p50/p99/max for --sample more at the final count;
  * the size of `GET /v1/<mount>/crl` (DER) and its fetch time at 0 and at the end.

The last line is `RESULT openbao_revoke key=value ...`.
"""

import argparse
import http.client
import json
import os
import sys
import threading
import time


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def pct(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    import math

    rank = max(1, min(len(v), math.ceil(p / 100 * len(v))))
    return v[rank - 1]


class Client:
    def __init__(self, addr, token):
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)
        self.headers = {"X-Vault-Token": token, "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers=self.headers)
        r = self.conn.getresponse()
        payload = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}: {payload[:300]!r}")
        return payload


def issue(addr, token, mount, role, count, threads):
    serials = [None] * count
    errors = []

    def worker(k):
        c = Client(addr, token)
        for i in range(k, count, threads):
            try:
                out = json.loads(
                    c.call(
                        "POST",
                        f"/v1/{mount}/issue/{role}",
                        {"uri_sans": f"spiffe://example.org/bench/revoke/{i}", "ttl": "24h"},
                    )
                )
                serials[i] = out["data"]["serial_number"]
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
                return

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        sys.exit(f"openbao_revoke: issuing failed: {errors[0]}")
    return serials


def crl(client, mount):
    t0 = time.perf_counter()
    der = client.call("GET", f"/v1/{mount}/crl")
    return len(der), (time.perf_counter() - t0) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True, help="host:port of the OpenBao dev server (plain HTTP)")
    ap.add_argument("--token", default="root")
    ap.add_argument("--mount", default="pki")
    ap.add_argument("--role", default="spiffe")
    ap.add_argument("--sample", type=int, default=100, help="revocations per measured sample / window")
    ap.add_argument("--max-revoked", type=int, default=5000)
    ap.add_argument("--fill-seconds", type=float, default=600)
    ap.add_argument("--issue-threads", type=int, default=4)
    a = ap.parse_args()

    total = a.max_revoked + a.sample
    t0 = time.perf_counter()
    serials = issue(a.addr, a.token, a.mount, a.role, total, a.issue_threads)
    print(f"issued {total} certificates in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    c = Client(a.addr, a.token)
    crl0_bytes, crl0_ms = crl(c, a.mount)
    load_start = loadavg()

    def revoke(serial):
        t = time.perf_counter()
        c.call("POST", f"/v1/{a.mount}/revoke", {"serial_number": serial})
        return (time.perf_counter() - t) * 1e3

    # From 0 revoked: the first sample is also the first fill window.
    windows = []
    revoked = 0
    fill_start = time.perf_counter()
    first = None
    while revoked < a.max_revoked and time.perf_counter() - fill_start < a.fill_seconds:
        lat = [revoke(serials[revoked + i]) for i in range(min(a.sample, a.max_revoked - revoked))]
        if first is None:
            first = lat
        revoked += len(lat)
        windows.append((revoked, pct(lat, 50), pct(lat, 99)))
        print(
            f"  {revoked:6d} revoked: window p50 {pct(lat, 50):7.1f} ms, p99 {pct(lat, 99):7.1f} ms "
            f"({time.perf_counter() - fill_start:5.0f} s; load {loadavg()})",
            file=sys.stderr,
        )
    fill_s = time.perf_counter() - fill_start
    # At the final count.
    load_end_sample = loadavg()
    last = [revoke(serials[revoked + i]) for i in range(a.sample)]
    final = revoked + a.sample
    crl_bytes, crl_ms = crl(c, a.mount)
    load_end = loadavg()

    print(
        f"OpenBao pki/revoke (CRL rebuilt in the call), from 0 revoked: p50 {pct(first, 50):.1f} ms, "
        f"p99 {pct(first, 99):.1f} ms, max {max(first):.1f} ms; CRL {crl0_bytes} bytes (fetch {crl0_ms:.1f} ms)",
        file=sys.stderr,
    )
    print(
        f"  at {revoked} revoked (after {fill_s:.0f} s of revoking): p50 {pct(last, 50):.1f} ms, "
        f"p99 {pct(last, 99):.1f} ms, max {max(last):.1f} ms; CRL at {final}: {crl_bytes} bytes "
        f"(fetch {crl_ms:.1f} ms); load {load_end}",
        file=sys.stderr,
    )
    growth = ";".join(f"{n}:{p50:.1f}" for n, p50, _ in windows)
    print(
        f"RESULT openbao_revoke first_p50_ms={pct(first, 50):.1f} first_p99_ms={pct(first, 99):.1f} "
        f"first_max_ms={max(first):.1f} revoked={revoked} fill_s={fill_s:.0f} last_p50_ms={pct(last, 50):.1f} "
        f"last_p99_ms={pct(last, 99):.1f} last_max_ms={max(last):.1f} crl0_bytes={crl0_bytes} "
        f"crl_bytes={crl_bytes} crl_final_count={final} crl_fetch_ms={crl_ms:.1f} growth=\"{growth}\" "
        f"load_start=\"{load_start}\" load_last=\"{load_end_sample}\" load_end=\"{load_end}\""
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
