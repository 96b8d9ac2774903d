"""The code location server's container health check, without importing Dagster.

``dagster api grpc-health-check`` asks the server gRPC's standard health service for ``DagsterApi``; it starts the
whole of Dagster to do so, ~1.4 s of CPU on this machine. Run every 10 s (deploy/compose.yaml), that was ~14% of a
core spent on asking. This asks the same question with grpc alone (~0.1 s):

    python -m mlops_assets.healthcheck HOST PORT

Exit 0 when the server answers SERVING and its code loaded, else 1 with the reason on stderr. A code server whose
code failed to load (PostgreSQL unreachable when it opened the instance, an import error) still answers SERVING and
serves the load error to the webserver and the daemon for good: no sensor runs, no run starts. It is unhealthy here.
"""

from __future__ import annotations

import sys

#: The service name Dagster's gRPC server reports its health under (``dagster._grpc.client.health_check_query``).
DAGSTER_SERVICE = "DagsterApi"


def code_server_status(host: str, port: int, timeout_s: float = 5.0) -> str:
    """The health status the code location server at ``host:port`` reports: ``SERVING`` when it is up."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=DAGSTER_SERVICE)
        response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


#: Dagster's gRPC method that lists a code location's repositories, or gives its load error (``dagster_api.proto``:
#: an empty request; a reply whose field 1 is the serialized answer).
LIST_REPOSITORIES = "/api.DagsterApi/ListRepositories"


def _field_one(reply: bytes) -> str:
    """Field 1 (a string) of a protobuf message, read by hand: its compiled classes live in Dagster's package, whose
    import is what this check avoids."""
    if not reply:
        return ""
    if reply[0] != 0x0A:  # field 1, length-delimited
        raise ValueError(f"unexpected reply (first byte {reply[0]:#x})")
    length, shift, position = 0, 0, 1
    while True:
        byte = reply[position]
        length |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if not byte & 0x80:
            return reply[position : position + length].decode()


def code_load_error(host: str, port: int, timeout_s: float = 10.0) -> str | None:
    """The load error the code server at ``host:port`` serves for its code, in one line (None: its code loaded)."""
    import json

    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary(
            LIST_REPOSITORIES, request_serializer=lambda _: b"", response_deserializer=_field_one
        )
        answer = json.loads(call(None, timeout=timeout_s))
    if answer.get("__class__") != "SerializableErrorInfo":
        return None
    return " ".join(str(answer.get("message") or answer.get("cls_name") or "unknown").split())[:500]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        print("usage: python -m mlops_assets.healthcheck HOST PORT", file=sys.stderr)
        return 2
    try:
        status = code_server_status(args[0], int(args[1]))
    except Exception as error:  # noqa: BLE001 (any failure to answer is "unhealthy", said plainly)
        print(f"code server {args[0]}:{args[1]} did not answer: {error}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"code server {args[0]}:{args[1]} is {status}", file=sys.stderr)
        return 1
    try:
        error = code_load_error(args[0], int(args[1]))
    except Exception as failure:  # noqa: BLE001 (still loading, or no answer: unhealthy, said plainly)
        print(f"code server {args[0]}:{args[1]} did not list its code: {failure}", file=sys.stderr)
        return 1
    if error is not None:
        print(
            f"code server {args[0]}:{args[1]} serves a load error, not the code: {error} (restart it once the cause "
            "is fixed: it does not load again by itself)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
