"""The test PostgreSQL servers do not outlive their sessions: a server whose session was killed before its teardown
is stopped and removed by the next session, and a live session's server is left alone."""

from __future__ import annotations

import socket
import subprocess
import tempfile
from pathlib import Path

from mlops_assets.core.processes import ProcessIdentity, process_identity
from mlops_assets_tests.deploy.conftest import (
    OWNER_FILE,
    ROOT_PREFIX,
    PostgresServer,
    _postmaster_of,
    _server_os_user,
    postgres_bindir,
    start_postgres_server,
    stop_abandoned_servers,
)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_server_of_a_killed_session_is_stopped_and_removed_and_a_live_one_kept(
    postgres_server: PostgresServer,
) -> None:
    bindir = postgres_bindir()
    assert bindir is not None
    gone = subprocess.Popen(["true"])  # a session's process that has ended: its pid names no live process
    gone.wait()
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir="/tmp"))
    (root / OWNER_FILE).write_text(process_identity(gone.pid).to_json())
    abandoned = start_postgres_server(root, bindir, _server_os_user())
    postmaster = _postmaster_of(root / "data")
    assert postmaster is not None and _accepts(abandoned.port)

    removed = stop_abandoned_servers()

    assert root in removed and not root.exists()
    assert not Path(f"/proc/{postmaster}").exists(), "the abandoned server still runs"
    assert not _accepts(abandoned.port)
    # this session's own server (its owner is this live process) still runs and answers
    assert postgres_server.root not in removed and postgres_server.root.exists()
    assert ProcessIdentity.from_json((postgres_server.root / OWNER_FILE).read_text()) == process_identity()
    postgres_server.run("psql", "-U", "postgres", "-d", "postgres", "-c", "SELECT 1")
