"""Deployment fixtures: a real PostgreSQL server (Debian's ``postgresql`` package) for the Dagster instance.

``postgres_server`` starts one server per session in a temporary directory, on a free loopback port, with password
authentication; ``postgres_url`` is a database on it, ``fresh_postgres_url`` a new empty database per test. As root
(CI) the server runs as the ``postgres`` user, since PostgreSQL refuses to run as root. Nothing is mocked; nothing
listens anywhere but 127.0.0.1 and a socket in the temporary directory. The server is stopped at the session's end;
one whose session was killed before its end (``pg_ctl`` detaches the server, so it outlives the session) is stopped
and removed by the next session (``stop_abandoned_servers``).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlops_assets.core.processes import Liveness, ProcessIdentity, judge, process_identity

#: The database role the tests connect as (the superuser initdb creates).
PG_USER = "postgres"
#: A session's server lives in ``/tmp/mlops-pg-*`` (short: a Unix socket path has ~100 bytes) with this file holding
#: the identity of the session's process (``core.processes``), so that a later session knows when it was abandoned.
ROOT_PREFIX, OWNER_FILE = "mlops-pg-", "owner.json"


def postgres_bindir() -> Path | None:
    """Where ``initdb``, ``pg_ctl`` and ``createdb`` are: ``$MLOPS_PG_BINDIR``, else the newest Debian
    ``/usr/lib/postgresql/<major>/bin``, else ``$PATH``; None when PostgreSQL is not installed."""
    candidates = [os.environ.get("MLOPS_PG_BINDIR", "")]
    # Debian keeps the server binaries off $PATH, one folder per major version; the newest wins
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    which = shutil.which("initdb")
    candidates.append(str(Path(which).parent) if which else "")
    for candidate in candidates:
        if candidate and all((Path(candidate) / tool).is_file() for tool in ("initdb", "pg_ctl", "createdb")):
            return Path(candidate)
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running PostgreSQL server of the test session, reachable on ``127.0.0.1:port`` with a password."""

    bindir: Path
    root: Path
    port: int
    password: str
    #: the OS user the server runs as (None: the current one)
    os_user: str | None
    _created: set[str] = field(default_factory=set)

    def url(self, database: str) -> str:
        """The SQLAlchemy / dagster-postgres URL of ``database``."""
        return f"postgresql+psycopg2://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL client tool (``createdb``, ``psql``, ...) against the server over TCP with the password,
        failing with its output. Clients may run as root: only the server refuses to."""
        env = {**os.environ, "PGPASSWORD": self.password, "PGHOST": "127.0.0.1", "PGPORT": str(self.port)}
        command = [str(self.bindir / tool), *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, f"{tool} {' '.join(args)} failed: {done.stdout}{done.stderr}"
        return done

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (once) and return its URL."""
        if name not in self._created:
            self.run("createdb", "-U", PG_USER, name)
            self._created.add(name)
        return self.url(name)


def _as_user(os_user: str | None, command: list[str]) -> list[str]:
    """``command`` run as ``os_user`` (``runuser`` needs root, which is exactly when a user is set)."""
    return ["runuser", "-u", os_user, "--", *command] if os_user else command


def _server_os_user() -> str | None:
    """None when not root; as root, the user PostgreSQL must run as (it refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")  # made by Debian's postgresql package
    except KeyError:
        pytest.fail("running as root needs the `postgres` OS user to start PostgreSQL: apt-get install postgresql")
    return "postgres"


def start_postgres_server(root: Path, bindir: Path, os_user: str | None, timeout: float = 60) -> PostgresServer:
    """initdb a cluster in ``root`` (password auth, no trust) and start it on a free loopback port, its Unix socket
    in ``root`` too (never the system's /var/run/postgresql). Returns once it accepts connections."""
    password = secrets.token_urlsafe(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if os_user:
        # the server's user must own its files; /tmp/<dir> is reachable by it (pytest's tmp_path, mode 0700 under
        # root's folder, would not be)
        record = pwd.getpwnam(os_user)
        os.chown(root, record.pw_uid, record.pw_gid)
        os.chown(pwfile, record.pw_uid, record.pw_gid)
    data = root / "data"
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}", "--auth=scram-sha-256"]
    done = subprocess.run(
        _as_user(os_user, [*initdb, "-E", "UTF8", "--no-sync"]), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"initdb failed: {done.stdout}{done.stderr}"
    pwfile.unlink()
    last_error = ""
    for _ in range(3):  # the port is free when chosen; another process may take it before the server binds it
        port = free_port()
        # fsync off: a throw-away cluster, and the test's many small commits should not wait on the disk
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        start = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w"]
        done = subprocess.run(
            _as_user(os_user, [*start, "-t", str(int(timeout)), "start"]), capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            return PostgresServer(bindir=bindir, root=root, port=port, password=password, os_user=os_user)
        log = root / "server.log"
        last_error = f"{done.stdout}{done.stderr}{log.read_text() if log.exists() else ''}"
        time.sleep(0.5)
    raise AssertionError(f"PostgreSQL did not start: {last_error}")


def stop_postgres_server(server: PostgresServer) -> None:
    """Stop the server now (``fast``: open connections are closed, no waiting for clients)."""
    stop = [str(server.bindir / "pg_ctl"), "-D", str(server.root / "data"), "-m", "fast", "-w", "stop"]
    subprocess.run(_as_user(server.os_user, stop), capture_output=True, text=True, timeout=60, check=False)


def _postmaster_of(data: Path) -> int | None:
    """The running postmaster of the cluster in ``data``: the pid its ``postmaster.pid`` names, if that process is
    still a server of this folder (not a reused pid)."""
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if str(data) in command else None


def stop_abandoned_servers(parent: Path = Path("/tmp"), timeout: float = 30) -> list[Path]:
    """Stop and remove the servers of earlier sessions whose process is gone (killed by SIGTERM or SIGKILL, they never
    ran their teardown; judged as run recovery judges a run's process, a reused pid included); returns the folders
    removed. A server of a live session, or a folder without an owner file, is left alone. Immediate shutdown
    (SIGQUIT): nothing in a throw-away cluster is worth a checkpoint."""
    removed = []
    for root in sorted(parent.glob(f"{ROOT_PREFIX}*")):
        try:
            owner = ProcessIdentity.from_json((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if judge(owner).liveness is not Liveness.GONE:
            continue
        postmaster = _postmaster_of(root / "data")
        if postmaster is not None:
            try:
                os.kill(postmaster, signal.SIGQUIT)
            except PermissionError:  # another user's server: theirs to stop
                continue
            deadline = time.monotonic() + timeout
            # until the process has ended and been reaped by its parent (init): no entry left in /proc
            while Path(f"/proc/{postmaster}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session. Missing binaries are installed from Debian's package when
    running as root; otherwise the tests fail saying what to install (they never skip: nothing is assumed)."""
    bindir = postgres_bindir()
    if bindir is None and os.geteuid() == 0:
        for command in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
        ):
            subprocess.run(
                command, check=False, capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            )
        bindir = postgres_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: `apt-get install postgresql` (as root)")
    stop_abandoned_servers()
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir="/tmp"))
    (root / OWNER_FILE).write_text(process_identity().to_json())
    server = start_postgres_server(root, bindir, _server_os_user())
    try:
        yield server
    finally:
        stop_postgres_server(server)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of the session's database ``mlops`` (shared by the session's tests: a Dagster instance there keeps
    what earlier tests wrote; use ``fresh_postgres_url`` for an empty one)."""
    return postgres_server.create_database("mlops")


@pytest.fixture
def fresh_postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database for this test alone."""
    slug = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    return postgres_server.create_database(f"t_{slug}_{secrets.token_hex(4)}")
