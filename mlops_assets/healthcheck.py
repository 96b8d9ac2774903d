"""The code location server's container health check, without importing Dagster.

``dagster api grpc-health-check`` asks the server gRPC's standard health service for ``DagsterApi``; it starts the
whole of Dagster to do so, ~1.4 s of CPU on this machine. Run every 10 s (deploy/compose.yaml), that was ~14% of a
core spent on asking. This asks the same question with grpc alone (~0.1 s):

    python -m mlops_assets.healthcheck HOST PORT

Exit 0 when the server answers SERVING, else 1 with the reason on stderr.
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
