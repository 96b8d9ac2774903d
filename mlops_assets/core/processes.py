"""Which process runs a job, on which host, and whether it is still alive: the plain-Python half of run recovery.

A process is identified by more than its pid, because pids are reused and are only meaningful on one host and in one
pid namespace (a container has its own):

- ``host``: the host name;
- ``boot_id``: the kernel's boot id (``/proc/sys/kernel/random/boot_id``), new at every boot: a process recorded under
  another boot id of the same host cannot be alive any more;
- ``pid_namespace``: the pid namespace (``/proc/self/ns/pid``): two containers may share a host name and a kernel but
  not their pids;
- ``start_ticks``: when the process started, in clock ticks after boot (field 22 of ``/proc/<pid>/stat``): a live
  process with the recorded pid but another start time is a different process that reused the pid.

The last three exist on Linux only; elsewhere a process is judged by its host name and pid (``os.kill(pid, 0)``), which
cannot tell a reused pid from the original one. No Dagster import here.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessIdentity:
    """A process, identified well enough to tell, later and from another process, whether it still runs."""

    pid: int
    host: str
    boot_id: str | None = None
    pid_namespace: str | None = None
    start_ticks: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ProcessIdentity:
        """Parse :meth:`to_json`'s output; ``ValueError`` when it is not one."""
        try:
            data = json.loads(text)
            return cls(
                pid=int(data["pid"]),
                host=str(data["host"]),
                boot_id=data.get("boot_id"),
                pid_namespace=data.get("pid_namespace"),
                start_ticks=None if data.get("start_ticks") is None else int(data["start_ticks"]),
            )
        except (TypeError, KeyError, json.JSONDecodeError) as error:
            raise ValueError(f"not a process identity: {text!r} ({error})") from None

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"


class Liveness(Enum):
    ALIVE = "alive"
    GONE = "gone"
    #: on another host, in another pid namespace, or not identifiable: nothing can be said from here
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    liveness: Liveness
    reason: str


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def boot_id() -> str | None:
    return _read(_PROC / "sys" / "kernel" / "random" / "boot_id")


def pid_namespace() -> str | None:
    try:
        return os.readlink(_PROC / "self" / "ns" / "pid")
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of ``pid`` from ``/proc``, or None when not readable there."""
    text = _read(_PROC / str(pid) / "stat")
    if text is None:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces and parentheses
    return fields[0], int(fields[19])


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    return True


def is_self_or_ancestor(pid: int) -> bool:
    """Whether ``pid`` is this process or one of its ancestors (its parent, the parent's parent, ...)."""
    current = os.getpid()
    if pid == current:
        return True
    seen = 0
    current = os.getppid()
    while current > 1 and seen < 64:
        if current == pid:
            return True
        text = _read(_PROC / str(current) / "stat")
        if text is None:
            return False  # no /proc: only the parent can be told
        current = int(text.rsplit(")", 1)[1].split()[1])
        seen += 1
    return False


def process_identity(pid: int | None = None) -> ProcessIdentity:
    """The identity of ``pid`` (default: this process) on this host."""
    pid = os.getpid() if pid is None else pid
    stat = _stat(pid)
    return ProcessIdentity(
        pid=pid,
        host=socket.gethostname(),
        boot_id=boot_id(),
        pid_namespace=pid_namespace(),
        start_ticks=stat[1] if stat else None,
    )


def judge(recorded: ProcessIdentity) -> Verdict:
    """Whether the recorded process still runs, judged from this host.

    GONE only when that is certain: the process is on this host (same host name), and either the host restarted since
    (another boot id), or, in the same pid namespace, no process has that pid, it is a zombie (exited, not reaped), or
    the pid now belongs to a process that started at another time. A process on another host or in another pid
    namespace is UNKNOWN, never GONE.
    """
    where = recorded.describe()
    here = socket.gethostname()
    if recorded.host != here:
        return Verdict(Liveness.UNKNOWN, f"{where} is on another host than this one ({here})")
    current_boot = boot_id()
    if recorded.boot_id and current_boot and recorded.boot_id != current_boot:
        return Verdict(Liveness.GONE, f"{where} belonged to an earlier boot of this host (restarted since)")
    current_ns = pid_namespace()
    if recorded.pid_namespace and current_ns and recorded.pid_namespace != current_ns:
        return Verdict(
            Liveness.UNKNOWN, f"{where} is in another pid namespace ({recorded.pid_namespace}): another container"
        )
    if recorded.pid <= 0:
        return Verdict(Liveness.UNKNOWN, f"{where}: not a valid pid")
    if not _pid_exists(recorded.pid):
        return Verdict(Liveness.GONE, f"{where} is gone")
    stat = _stat(recorded.pid)
    if stat is not None:
        state, start_ticks = stat
        if state in ("Z", "X"):
            return Verdict(Liveness.GONE, f"{where} is gone (exited, not yet reaped)")
        if recorded.start_ticks is not None and start_ticks != recorded.start_ticks:
            return Verdict(Liveness.GONE, f"{where} is gone (pid {recorded.pid} now belongs to another process)")
    return Verdict(Liveness.ALIVE, f"{where} is running")
