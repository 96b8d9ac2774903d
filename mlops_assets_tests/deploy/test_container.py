"""The platform image and the compose stack, built and run here with podman (deploy/README.md).

- ``test_image_runs_the_pipeline_and_serves``: the image (``Dockerfile``, built once per session) runs the README's
  main pipeline on a mounted data directory (a thin slice: Jan-Mar 2013, every 20th flight), then ``mlops serve
  --host 0.0.0.0`` in the container answers a prediction from the host through a port published on 127.0.0.1, and
  flushes its prediction log when the container is stopped.
- ``test_compose_stack_refreshes_a_landed_month``: ``deploy/compose.yaml`` (PostgreSQL built from Debian's package,
  code server, webserver, daemon, prediction service) brought up with podman-compose, on the host's network over
  127.0.0.1 only (``deploy/compose.hostnet.yaml``); a month landed by a one-off container is refreshed by the stack's
  daemon (landing sensor -> run in the code server) and the service answers from the new online store.

Needs podman with a local ``python:3.11-slim``: ``../shared/tools/container-base.sh`` (beside the repo, or where
``$MLOPS_CONTAINER_BASE`` says) installs and
prepares both, on a machine that reaches no container registry; the session runs it (it is idempotent). When that
fails (podman cannot be installed here) the tests fail and say why: they never skip.
Nothing listens beyond 127.0.0.1; every container, volume and file made here is removed at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

from mlops_assets.core.settings import REPO_ROOT
from mlops_assets_tests.serving.conftest import FLIGHT  # the README's serving example

#: The script that prepares podman and the local base (``$MLOPS_CONTAINER_BASE``, else ``shared/`` beside the repo).
CONTAINER_BASE_ENV = "MLOPS_CONTAINER_BASE"
CONTAINER_BASE = Path(
    os.environ.get(CONTAINER_BASE_ENV) or REPO_ROOT.parent / "shared" / "tools" / "container-base.sh"
).absolute()
DEPLOY = REPO_ROOT / "deploy"
IMAGE = "localhost/mlops-assets:test"
POSTGRES_IMAGE = "localhost/mlops-postgres:test"
PODMAN_COMPOSE = "podman-compose==1.6.0"

#: Thin slice: every 20th flight (the whole pipeline in the container stays under a minute).
EVERY = "20"
BOTH_MODELS = ("flight_delay", "flight_cancellation")
#: The compose stack's long-running services (deploy/compose.yaml; the `mlops` one-off tool service is not started).
SERVICES = ("postgres", "code-server", "webserver", "daemon", "serve")

T = TypeVar("T")


@dataclass
class Podman:
    """podman with the environment container-base.sh prepared (storage, runtime, ulimits)."""

    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["podman", *args], self.env, timeout, check)

    def build(self, tag: str, context: Path, *build_args: str) -> float:
        """``podman build --pull=never --network host``: the local base stands in for the registry's. Wall seconds."""
        started = time.monotonic()
        args = [arg for value in build_args for arg in ("--build-arg", value)]
        self.run("build", "--pull=never", "--network", "host", "-t", tag, *args, str(context), timeout=1200)
        return time.monotonic() - started


def _run(command: list[str], env: dict[str, str], timeout: float, check: bool) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{shlex.join(command)} exited {result.returncode}\n"
            f"--- stdout (end)\n{result.stdout[-4000:]}\n--- stderr (end)\n{result.stderr[-4000:]}"
        )
    return result


def _unavailable(reason: str) -> NoReturn:
    """Podman cannot be installed here: a failure saying why (the tests never skip: nothing is assumed)."""
    print(f"container tests: {reason}", file=sys.stderr)
    pytest.fail(f"container tests cannot run: {reason} (run them as root: they install podman themselves)")


@pytest.fixture(scope="session")
def podman() -> Podman:
    """Runs ``container-base.sh`` (installs podman when missing, builds the local ``python:3.11-slim``) and returns
    podman with its environment."""
    if not CONTAINER_BASE.is_file():
        _unavailable(
            f"{CONTAINER_BASE} is missing: clone the repo beside shared/, or set {CONTAINER_BASE_ENV} to the path of "
            "container-base.sh"
        )
    started = time.monotonic()
    try:
        script = ["bash", str(CONTAINER_BASE)]
        result = subprocess.run(script, capture_output=True, text=True, timeout=1200, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        _unavailable(f"container-base.sh could not run: {error}")
    if result.returncode != 0:
        _unavailable(f"container-base.sh exited {result.returncode}: {result.stderr[-2000:]}")
    env = dict(os.environ)
    for line in result.stdout.splitlines():  # export A=1 B=2
        if line.startswith("export "):
            env.update(word.split("=", 1) for word in shlex.split(line)[1:] if "=" in word)
    tool = Podman(env=env)
    tool.timings["container-base.sh"] = time.monotonic() - started
    if tool.run("info", check=False).returncode != 0:
        _unavailable("podman is installed but `podman info` fails")
    return tool


@pytest.fixture(scope="session")
def platform_image(podman: Podman) -> str:
    """The repo's Dockerfile built once per session (later builds reuse the dependency layer)."""
    podman.timings["image build"] = podman.build(IMAGE, REPO_ROOT)
    size = podman.run("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip()
    print(f"image {IMAGE}: built in {podman.timings['image build']:.1f} s, {int(size) / 1e9:.2f} GB", file=sys.stderr)
    return IMAGE


@pytest.fixture(scope="session")
def postgres_image(podman: Podman) -> str:
    """deploy/postgres/Dockerfile on the local Debian base (container-base.sh makes one; the python:3.11-slim
    stand-in is Debian too)."""
    base = "localhost/debian:bookworm"
    if podman.run("image", "exists", base, check=False).returncode != 0:
        base = "docker.io/library/python:3.11-slim"
    podman.timings["postgres image build"] = podman.build(POSTGRES_IMAGE, DEPLOY / "postgres", f"BASE_IMAGE={base}")
    return POSTGRES_IMAGE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _data_dir(path: Path, podman: Podman, image: str) -> Path:
    """A data directory the image's non-root user can write (as root: given to its uid)."""
    path.mkdir(parents=True)
    uid = int(podman.run("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u").stdout)
    if os.geteuid() == 0:
        os.chown(path, uid, uid)
    else:
        path.chmod(0o777)
    return path


def _get_json(url: str, timeout: float = 5) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _post_json(url: str, body: object, timeout: float = 10) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def _wait_for(what: str, probe: Callable[[], T], timeout: float, interval: float = 1.0) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds with the last value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except OSError as error:  # not listening yet
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def _health(base: str) -> dict | None:
    status, body = _get_json(base + "/health")
    return body if status == 200 else None


def _newest_months(health: dict) -> dict[str, str | None]:
    return {name: (model.get("online_store") or {}).get("newest_month") for name, model in health["models"].items()}


def _serving_month(base: str, month: str) -> dict | None:
    """The service's health once it is ready and every model answers from an online store whose newest month is
    ``month``, else None."""
    health = _health(base)
    return health if health and _newest_months(health) == dict.fromkeys(BOTH_MODELS, month) else None


def _assert_prediction(answer: dict, model: str) -> None:
    prediction = answer["prediction"]
    assert prediction["model"] == model, prediction
    assert prediction["variant"] == "champion" and prediction["model_version"], prediction
    assert 0.0 <= prediction["probability"] <= 1.0, prediction


def test_image_runs_the_pipeline_and_serves(podman: Podman, platform_image: str, tmp_path: Path) -> None:
    started = time.monotonic()
    data = _data_dir(tmp_path / "data", podman, platform_image)
    in_image = ["run", "--rm", "--network", "none", "-v", f"{data}:/data", platform_image]

    # the README's main command, in the container, on the mounted data directory
    podman.run(*in_image, "mlops", "replay", "--through", "2013-03", "--every", EVERY)
    job = 'dagster job execute -m mlops_assets.definitions -j training_pipeline --tags "$(mlops months --tags)"'
    podman.run(*in_image, "sh", "-c", job, timeout=600)
    assert (data / "warehouse.duckdb").is_file()

    # the prediction service bound to 0.0.0.0 in its own network namespace, published on the host's loopback only
    port, name = _free_port(), f"mlops-serve-test-{secrets.token_hex(4)}"
    network = ["--network", "slirp4netns", "-p", f"127.0.0.1:{port}:8000"]
    serve = ["mlops", "serve", "--host", "0.0.0.0"]
    podman.run("run", "-d", "--name", name, *network, "-v", f"{data}:/data", platform_image, *serve)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for("mlops serve answering from the 2013-03 stores", lambda: _serving_month(base, "2013-03"), 60, 0.5)
        _assert_prediction(_post_json(base + "/predict", FLIGHT), "flight_delay")
        _assert_prediction(_post_json(base + "/models/flight_cancellation/predict", FLIGHT), "flight_cancellation")
        # SIGTERM reaches uvicorn through tini: the prediction log is flushed before the container ends
        stop_started = time.monotonic()
        podman.run("stop", "--time", "20", name, timeout=60)
        stop_seconds = time.monotonic() - stop_started
        logs = podman.run("logs", name).stderr
    finally:
        podman.run("rm", "--force", "--volumes", name, check=False)
    assert stop_seconds < 10, f"the service took {stop_seconds:.1f} s to stop: SIGTERM did not reach it\n{logs}"
    for model in BOTH_MODELS:
        assert list((data / "predictions" / model / "online").glob("*/*.parquet")), (model, logs)
    print(f"{podman.timings}; test body {time.monotonic() - started:.1f} s", file=sys.stderr)


@dataclass
class Compose:
    """podman-compose on deploy/compose.yaml + compose.hostnet.yaml as one uniquely named project."""

    podman: Podman
    executable: str
    project: str
    env: dict[str, str]

    def __call__(
        self, *args: str, timeout: float = 300, check: bool = True, hostnet: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """podman-compose with compose.hostnet.yaml and hostnet.env (ports from ``env``), or compose.yaml alone with
        its own defaults (``hostnet=False``)."""
        files, env = ["-f", str(DEPLOY / "compose.yaml")], self.env
        if hostnet:
            files += ["--env-file", str(DEPLOY / "hostnet.env"), "-f", str(DEPLOY / "compose.hostnet.yaml")]
        else:
            env = {key: value for key, value in env.items() if not key.startswith("MLOPS_")}
        return _run([self.executable, "-p", self.project, *files, *args], env, timeout, check)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def logs(self) -> str:
        parts = []
        for service in SERVICES:
            result = self.podman.run("logs", "--tail", "40", self.container(service), check=False)
            parts.append(f"--- {service}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        return "\n".join(parts)


def _podman_compose(podman: Podman) -> str:
    """``$MLOPS_PODMAN_COMPOSE``, else podman-compose on PATH, else a tool venv beside podman's storage (made once)."""
    found = os.environ.get("MLOPS_PODMAN_COMPOSE") or shutil.which("podman-compose", path=podman.env.get("PATH"))
    if found:
        return found
    venv = Path(podman.env.get("OCI_DIR", "/var/tmp/oci")) / "tools" / PODMAN_COMPOSE.replace("==", "-")
    executable = venv / "bin" / "podman-compose"
    if not executable.is_file():
        _run([sys.executable, "-m", "venv", str(venv)], podman.env, 120, True)
        _run([str(venv / "bin" / "pip"), "install", "--quiet", PODMAN_COMPOSE], podman.env, 300, True)
    return str(executable)


@pytest.fixture
def compose(podman: Podman, platform_image: str, postgres_image: str) -> Iterator[Compose]:
    """The stack's project, torn down with its volumes afterwards (the logs are printed when the test failed)."""
    ports = {
        name: str(_free_port())
        for name in ("MLOPS_POSTGRES_PORT", "MLOPS_CODE_SERVER_PORT", "MLOPS_WEBSERVER_PORT", "MLOPS_SERVE_PORT")
    }
    env = {**podman.env, **ports, "MLOPS_IMAGE": platform_image, "MLOPS_POSTGRES_IMAGE": postgres_image}
    env["MLOPS_SENSOR_INTERVAL_S"] = "5"  # the daemon looks at the landing zone every 5 s instead of 30
    stack = Compose(podman, _podman_compose(podman), f"mlopstest{secrets.token_hex(4)}", env)
    try:
        yield stack
    finally:
        # the platform's services stopped at once (podman-compose's `down` stops them one after the other: ~12 s),
        # before PostgreSQL (which `down` stops and removes with the rest)
        platform = [stack.container(service) for service in SERVICES if service != "postgres"]
        podman.run("stop", "--time", "20", *platform, timeout=120, check=False)
        stack("--profile", "tools", "down", "--volumes", timeout=180, check=False)


def test_compose_stack_refreshes_a_landed_month(compose: Compose) -> None:
    started = time.monotonic()
    steps: dict[str, float] = {}

    def step(name: str) -> None:
        steps[name] = round(time.monotonic() - started, 1)

    one_off = ("--profile", "tools", "run", "--rm", "-T", "mlops")
    try:
        # compose.yaml alone (the default shape, not run here): published ports on the loopback only
        config = compose("config", hostnet=False).stdout
        assert "127.0.0.1:3000:3000" in config and "127.0.0.1:8000:8000" in config, config
        assert config.count("ports:") == 2, config

        # first training, before the daemon runs (so nothing else writes the DuckDB file meanwhile): the README's
        # main command in one-off containers on the stack's volume and PostgreSQL instance
        compose("up", "-d", "postgres")
        compose(*one_off, "mlops", "replay", "--through", "2013-03", "--every", EVERY)
        job = 'dagster job execute -m mlops_assets.definitions -j training_pipeline --tags "$(mlops months --tags)"'
        compose(*one_off, "sh", "-c", job, timeout=600)
        step("first training")

        compose("up", "-d")
        serve = f"http://127.0.0.1:{compose.env['MLOPS_SERVE_PORT']}"
        _wait_for("the service answering from the 2013-03 stores", lambda: _serving_month(serve, "2013-03"), 120)
        webserver = f"http://127.0.0.1:{compose.env['MLOPS_WEBSERVER_PORT']}"
        query = {"query": "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"}
        loaded = [{"name": "mlops_assets", "loadStatus": "LOADED"}]

        def location_loaded() -> bool:
            workspace = (_post_json(webserver + "/graphql", query).get("data") or {}).get("workspaceOrError") or {}
            return workspace.get("locationEntries") == loaded

        _wait_for("the webserver loading the code location from the code server", location_loaded, 120)
        step("stack serving")

        # a new month lands (a one-off container of the image on the same volume); the daemon's landing sensor
        # requests its refresh, the code server runs it, the service picks up the new online stores
        compose(*one_off, "mlops", "replay", "--month", "2013-04", "--every", EVERY)
        step("2013-04 landed")
        _wait_for("the service answering from the 2013-04 stores", lambda: _serving_month(serve, "2013-04"), 300, 2)
        step("2013-04 served")
        april = {**FLIGHT, "scheduled_departure": "2013-04-02T09:00"}
        answer = _post_json(serve + "/predict", april)
        _assert_prediction(answer, "flight_delay")
        assert answer["prediction"]["online_store"].startswith("2013-04"), answer
        assert answer["prediction"]["features_stale"] is False, answer

        # the runs are in PostgreSQL: the first training and the landing sensor's refresh of 2013-04 (which goes on
        # after the online stores: batch scores, drift report, live performance)
        sql = (
            "SELECT r.pipeline_name || '|' || r.status || '|' || coalesce(p.value, '') FROM runs r "
            "LEFT JOIN run_tags p ON p.run_id = r.run_id AND p.key = 'dagster/partition' ORDER BY r.create_timestamp"
        )
        psql = ["exec", compose.container("postgres"), "psql", "-U", "dagster", "-d", "dagster", "-tA", "-c", sql]
        # (the drift sensors may already have requested each model's retraining after it: not waited for)
        expected = {"training_pipeline|SUCCESS|", "landing_refresh|SUCCESS|2013-04"}
        seen: list[list[str]] = [[]]

        def runs_done() -> bool:
            seen[0] = compose.podman.run(*psql).stdout.split()
            return expected <= set(seen[0])

        try:
            _wait_for("the runs in PostgreSQL", runs_done, 240, 2)
        except AssertionError as error:
            raise AssertionError(f"{error}; runs: {seen[0]}") from None
        step("2013-04 refreshed")

        # every role's health check (compose.yaml) passes; podman runs them on demand (its timers need systemd)
        for service in SERVICES:
            result = compose.podman.run("healthcheck", "run", compose.container(service), check=False, timeout=60)
            assert result.returncode == 0, (service, result.stdout, result.stderr)
        step("checked")
    except BaseException:
        print(compose.logs(), file=sys.stderr)
        raise
    finally:
        print(f"compose stack steps (s from start): {steps}", file=sys.stderr)
