#!/usr/bin/env python3
"""The machine's floor for receiving an xDS request with Envoy's node: the CPU
a process spends receiving N messages of SIZE bytes over a Unix stream socket
into one reused buffer (no parsing, no allocation), per message.

    python3 bench/socket_floor.py [N=100000] [SIZE=61000]

A forked child writes the messages; the figure is the receiver's own
user + system CPU (getrusage) divided by N. docs/benchmarks.md, "SDS with
the node on every request", compares trustmesh's CPU per ACK with it.
"""
import os
import resource
import socket
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
size = int(sys.argv[2]) if len(sys.argv) > 2 else 61_000
reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
pid = os.fork()
if pid == 0:
    reader.close()
    message = b"x" * size
    for _ in range(n):
        writer.sendall(message)
    writer.close()
    os._exit(0)
writer.close()
view = memoryview(bytearray(256 * 1024))
total = 0
before, start = resource.getrusage(resource.RUSAGE_SELF), time.time()
while True:
    got = reader.recv_into(view)
    if got == 0:
        break
    total += got
after = resource.getrusage(resource.RUSAGE_SELF)
os.waitpid(pid, 0)
user = (after.ru_utime - before.ru_utime) * 1e6 / n
system = (after.ru_stime - before.ru_stime) * 1e6 / n
print(f"received {total / 1e9:.2f} GB in {time.time() - start:.2f} s: receiver CPU {user + system:.2f} us "
      f"per {size}-byte message (user {user:.2f}, system {system:.2f})")
print(f"RESULT socket_floor n={n} size={size} cpu_us={user + system:.2f} user_us={user:.2f} sys_us={system:.2f}")
