#!/usr/bin/env python3
"""bench/grpc_unary.py: the grpcio side of bench/run.sh's grpc suite.

  grpc_unary.py serve --port P
      A grpcio server on 127.0.0.1:P whose generic handler answers every unary call of
      /mesh.echo.v1.Echo/Echo (and any other method) with the request's bytes.

  grpc_unary.py client --target 127.0.0.1:P [--authority A] [--calls N] [--size S]
      N sequential unary calls of /mesh.echo.v1.Echo/Echo (one channel, one call at a time),
      each timed from before the call to its answer; prints JSON: count, ok, errors, total
      (seconds of the timed loop), mean/p50/p99/p999 (seconds), first_error.

  grpc_unary.py body --size S [--grpc]
      Writes to stdout the request the client sends: a mesh.echo.v1.EchoRequest whose
      `message` holds S bytes, with --grpc the 5-byte gRPC length prefix in front (a body
      file for h2load -d).

The request is a valid EchoRequest, so the same client also calls mesh-echo's gRPC server.
"""

import argparse
import json
import sys
import time


def echo_request(size):
    """mesh.echo.v1.EchoRequest { message: 'x' * size } in protobuf wire format."""
    msg = b"x" * size
    n = len(msg)
    varint = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            varint.append(b | 0x80)
        else:
            varint.append(b)
            break
    return b"\x0a" + bytes(varint) + msg


def grpc_frame(payload):
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


METHOD = "/mesh.echo.v1.Echo/Echo"


def serve(args):
    from concurrent import futures

    import grpc

    class Echo(grpc.GenericRpcHandler):
        def service(self, handler_call_details):
            # No (de)serializers: the handler gets and returns raw bytes.
            return grpc.unary_unary_rpc_method_handler(lambda request, context: request)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[Echo()])
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"grpcio echo server on 127.0.0.1:{args.port}", flush=True)
    server.wait_for_termination()


def client(args):
    import grpc

    options = []
    if args.authority:
        options.append(("grpc.default_authority", args.authority))
    channel = grpc.insecure_channel(args.target, options=options)
    call = channel.unary_unary(METHOD)  # bytes in, bytes out
    request = echo_request(args.size)
    grpc.channel_ready_future(channel).result(timeout=10)
    for _ in range(args.warmup):
        call(request, timeout=10)
    lat = []
    ok = errors = 0
    first_error = None
    clock = time.perf_counter
    t0 = clock()
    for _ in range(args.calls):
        s = clock()
        try:
            call(request, timeout=10)
            ok += 1
        except grpc.RpcError as e:
            errors += 1
            if first_error is None:
                first_error = f"{e.code()}: {e.details()}"
        lat.append(clock() - s)
    total = clock() - t0
    channel.close()
    lat.sort()

    def pct(p):
        if not lat:
            return None
        return lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))]

    json.dump(
        {
            "count": len(lat),
            "ok": ok,
            "errors": errors,
            "total": total,
            "mean": sum(lat) / len(lat) if lat else None,
            "p50": pct(50),
            "p99": pct(99),
            "p999": pct(99.9),
            "first_error": first_error,
            "grpcio": grpc.__version__,
        },
        sys.stdout,
    )
    print()
    return 0 if ok > 0 else 1


def body(args):
    payload = echo_request(args.size)
    sys.stdout.buffer.write(grpc_frame(payload) if args.grpc else payload)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True, help="host:port to connect to")
    c.add_argument("--authority", default="", help=":authority of the calls")
    c.add_argument("--calls", type=int, default=5000)
    c.add_argument("--warmup", type=int, default=0, help="untimed calls first")
    c.add_argument("--size", type=int, default=64)
    b = sub.add_parser("body")
    b.add_argument("--size", type=int, default=64)
    b.add_argument("--grpc", action="store_true")
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args)
    elif args.cmd == "client":
        sys.exit(client(args))
    else:
        body(args)


if __name__ == "__main__":
    main()
