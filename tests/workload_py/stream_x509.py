"""py-spiffe follows the X.509 context stream and prints one line per
update: the SPIFFE IDs and leaf serials (hex), space separated.

Usage: SPIFFE_ENDPOINT_SOCKET=unix:///path stream_x509.py UPDATES
Exits 0 after UPDATES updates, 1 on an error or after 30 s without them.
"""
import sys
import threading

from spiffe import WorkloadApiClient


def follow(wanted, numbered=False):
    """Follows the stream until `wanted` updates and prints "update", the
    update's number if `numbered`, and the SPIFFE IDs with their leaf serials
    for each. Exits 1 on an error or after 30 s without them; returns the
    number of updates."""
    seen = []
    done = threading.Event()
    failure = []

    def on_success(ctx):
        parts = [f"{s.spiffe_id}={s.leaf.serial_number:x}" for s in ctx.x509_svids]
        seen.append(parts)
        number = [len(seen)] if numbered else []
        print("update", *number, " ".join(parts), flush=True)
        if len(seen) >= wanted:
            done.set()

    def on_error(err):
        failure.append(err)
        done.set()

    with WorkloadApiClient() as client:
        handler = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
        finished = done.wait(30)
        handler.cancel()
    if failure:
        print("error", failure[0], flush=True)
        sys.exit(1)
    if not finished:
        print("error: timed out after", len(seen), "updates", flush=True)
        sys.exit(1)
    return len(seen)


def main():
    print("ok stream", follow(int(sys.argv[1])), flush=True)


if __name__ == "__main__":
    main()
