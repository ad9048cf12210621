"""Makes py-spiffe's gRPC channel send `:authority: localhost`.

grpc-core (grpcio >= 1.57) sends the percent-encoded socket path as the
HTTP/2 `:authority` of a `unix:` target (e.g. `tmp%2Ftrustmesh%2Fapi.sock`).
The `http`/`h2` crates under trustmesh's server reject a `%` in a host, so the
stream is reset with PROTOCOL_ERROR before it reaches the Workload API
(hyperium/h2#487, grpc/grpc#38142). grpc-go, the Rust `spiffe` crate and Envoy
send `localhost` or a cluster name and are not affected.

Until the server accepts that authority, the scripts set grpc's
`grpc.default_authority` channel option, as grpc-go does by default. Import
this module before `spiffe`. `TRUSTMESH_PY_RAW_AUTHORITY=1` turns it off
(tests/workload_api.rs uses that to watch for the server-side fix).
"""
import os

import grpc

if os.environ.get("TRUSTMESH_PY_RAW_AUTHORITY") != "1":
    _insecure_channel = grpc.insecure_channel

    def _channel(target, options=None, compression=None):
        options = list(options or []) + [("grpc.default_authority", "localhost")]
        return _insecure_channel(target, options=options, compression=compression)

    grpc.insecure_channel = _channel
