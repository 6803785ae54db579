"""A real gRPC peer (grpcio) for the proxy's interoperability tests.

  grpc_peer.py server --min-ping-ms 2000 --idle 8      prints "port N", serves until killed
  grpc_peer.py client --target 127.0.0.1:4140 --authority grpc.test:80 --call idle|unary [--count N]

The service `test.Peer` has `Echo` (unary, bytes echoed) and `Idle` (server streaming: one
message, then `--idle` seconds of silence, then a second message). The server enforces gRPC's
keepalive policy strictly: no PING more often than `--min-ping-ms` without data, and the
second offence closes the connection (GOAWAY ENHANCE_YOUR_CALM "too_many_pings"; gRPC's
default is the third, and 0 would mean never).
"""
import argparse
import sys
import time
from concurrent import futures

import grpc


def serve(args):
    def echo(request, context):
        return request

    def idle(request, context):
        yield b"one"
        time.sleep(args.idle)
        yield b"two"

    handler = grpc.method_handlers_generic_handler(
        "test.Peer",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Idle": grpc.unary_stream_rpc_method_handler(idle),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[
            ("grpc.http2.min_ping_interval_without_data_ms", args.min_ping_ms),
            ("grpc.http2.max_ping_strikes", 1),
            ("grpc.keepalive_permit_without_calls", 0),
        ],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    server.wait_for_termination()


def client(args):
    options = [("grpc.default_authority", args.authority)] if args.authority else []
    with grpc.insecure_channel(args.target, options=options) as channel:
        try:
            if args.call == "idle":
                call = channel.unary_stream("/test.Peer/Idle")
                got = [m for m in call(b"x", timeout=args.idle_timeout)]
                if got != [b"one", b"two"]:
                    print(f"unexpected messages {got!r}")
                    return 1
            else:
                echo = channel.unary_unary("/test.Peer/Echo")
                payload = b"p" * args.size
                for _ in range(args.count):
                    if echo(payload, timeout=10) != payload:
                        print("echo mismatch")
                        return 1
        except grpc.RpcError as e:
            print(f"rpc failed: {e.code().name}: {e.details()}")
            return 1
    print("ok")
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--min-ping-ms", type=int, default=300000)
    s.add_argument("--idle", type=float, default=8.0)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--authority", default="")
    c.add_argument("--call", choices=["idle", "unary"], default="unary")
    c.add_argument("--count", type=int, default=1)
    c.add_argument("--size", type=int, default=100)
    c.add_argument("--idle-timeout", type=float, default=60.0)
    args = p.parse_args()
    if args.mode == "server":
        serve(args)
        return 0
    return client(args)


if __name__ == "__main__":
    sys.exit(main())
