"""Runs whose process died: found, marked failed (or canceled) through Dagster's public API, their pool slots freed.

A run killed with ``kill -9`` (or whose host lost power) never reports its end: Dagster keeps it STARTED, and the slot
its running step held in the ``duckdb`` pool (one slot) stays claimed, so every later step of every later run waits
for it forever. Under the daemon, run monitoring handles that. Without a daemon, this module does, from three places:

- at the start of every run (``defs/resources.py``: the warehouse resource's setup, which every DuckDB step needs), so
  plain ``dagster job execute`` recovers before its first step asks for a slot; while the run executes, a watch
  repeats the check every :data:`WATCH_INTERVAL_S` seconds, so a run already waiting for a slot is released when the
  holder dies after it started;
- ``mlops resume`` (which then accepts the run it just marked failed), and the ``mlops`` commands that start runs;
- the daemon's ``run_recovery`` sensor (``defs/sensors.py``), every 30 s, with nobody at the keyboard and no run
  starting (the queue of one run stays blocked by a dead one).

A process in another container or on another host cannot be looked at: a run's process writes a heartbeat on the run
(:data:`HEARTBEAT_TAG`, at its start and every :data:`WATCH_INTERVAL_S` seconds), and such a run silent for
:data:`HEARTBEAT_STALE_S` seconds is gone (a code-server container restarted under it).

How a run's process is known: when a run's resources are set up, the process that executes the run (the one that
logged its RUN_START event: ``dagster job execute``, ``dagster api execute_run`` under a daemon, or the process calling
``execute_in_process``) is recorded on the run as tags: ``mlops/pid``, ``mlops/host`` (for people) and
``mlops/process`` (JSON: the run id it was recorded for, pid, host name, boot id, pid namespace and start time; see
``core.processes``). Only that tag is trusted, and only when it names the run it is on (Dagster copies tags to
retries). A run is declared dead only when its process is certainly gone on this host; a run on another host, in
another container (while its heartbeat is fresh), or without the tag (it died before its resources were set up, or
ran older code) is left alone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import dagster as dg

from mlops_assets.core.processes import (
    Liveness,
    ProcessIdentity,
    Verdict,
    is_self_or_ancestor,
    judge,
    process_identity,
)

PROCESS_TAG = "mlops/process"
PID_TAG = "mlops/pid"
HOST_TAG = "mlops/host"
#: When the run's process last said it was alive (Unix seconds): written at its start and by its watch every
#: :data:`WATCH_INTERVAL_S` seconds.
HEARTBEAT_TAG = "mlops/heartbeat"
#: A run in another container or on another host (its pid cannot be looked at from here) whose process has not been
#: heard from for this long is gone: the container of a code server that restarted, or a host that went away. Long
#: beside the watch's 10 s, so that a busy machine or a short outage of the run storage is no death.
HEARTBEAT_STALE_S = 180.0

#: Statuses of a run that has a process executing it (and may hold pool slots).
IN_PROGRESS = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
#: How often a running run looks again for dead runs (one query of the run storage).
WATCH_INTERVAL_S = 10.0
#: Overrides :data:`WATCH_INTERVAL_S` (seconds, > 0): how soon a run waiting for a slot notices its holder died.
WATCH_INTERVAL_ENV = "MLOPS_RECOVERY_WATCH_S"


#: The daemon writes a heartbeat every 30 s: a last one older than this says no daemon is running (Dagster's own
#: tolerance, 30 minutes, would count a daemon stopped 20 minutes ago).
DAEMON_ALIVE_S = 90.0
#: The daemon thread that launches Dagster's run retries.
RETRY_DAEMON = "EVENT_LOG_CONSUMER"
#: How long after a run failed its retry is waited for: the daemon launches it within seconds. A retry that has not
#: come by then never will (a daemon started for the first time ignores failures logged before it): resume it by hand.
RETRY_EXPECTED_S = 120.0


def daemon_retries(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Whether Dagster's run retries re-execute ``run`` once it is marked failed for a dead process: retries are on,
    it has retries left (a crash is not a step's failure, so ``retry_on_asset_or_op_failure: false`` still retries
    it), and a daemon is running to launch them. Then nobody should resume it by hand as well: two re-executions of
    one run would both run its steps."""
    from dagster._core.events import RunFailureReason
    from dagster._core.execution.retries import auto_reexecution_should_retry_run
    from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG, WILL_RETRY_TAG

    if not instance.run_retries_enabled:
        return False
    if run.status == dg.DagsterRunStatus.FAILURE and WILL_RETRY_TAG in run.tags:  # Dagster decided when it failed
        if run.tags[WILL_RETRY_TAG] != "true":
            return False
    else:
        reason = run.tags.get(RUN_FAILURE_REASON_TAG)
        failed = run.with_status(dg.DagsterRunStatus.FAILURE)
        if not auto_reexecution_should_retry_run(instance, failed, RunFailureReason(reason) if reason else None):
            return False
    beat = instance.get_daemon_heartbeats().get(RETRY_DAEMON)
    return beat is not None and time.time() - beat.timestamp < DAEMON_ALIVE_S


def retry_pending(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Whether Dagster's run retries are about to re-execute this failed run (:func:`daemon_retries`), judged for
    :data:`RETRY_EXPECTED_S` after its failure: a retry that has not come by then never will."""
    record = instance.get_run_record_by_id(run.run_id)
    failed_at = record.end_time if record is not None else None
    if failed_at is None or time.time() - failed_at >= RETRY_EXPECTED_S:
        return False
    return daemon_retries(instance, run)


def watch_interval_s() -> float:
    """``$MLOPS_RECOVERY_WATCH_S`` when it is a positive number, else :data:`WATCH_INTERVAL_S` (a bad value is
    logged, never a reason for the run to fail)."""
    raw = os.environ.get(WATCH_INTERVAL_ENV, "").strip()
    if not raw:
        return WATCH_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value > 0):
        logger.warning(f"${WATCH_INTERVAL_ENV}={raw!r} is not a positive number of seconds: using {WATCH_INTERVAL_S}")
        return WATCH_INTERVAL_S
    return value


logger = logging.getLogger("mlops_assets.recovery")


# --- what a run's process is ------------------------------------------------------------------------------------


def _run_start_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
    event = records[0].event_log_entry.dagster_event if records else None
    return event.pid if event is not None else None


def record_run_process(instance: dg.DagsterInstance, run_id: str) -> ProcessIdentity | None:
    """Tag run ``run_id`` with the identity of the process executing it; return that identity.

    The process is the one that logged the run's RUN_START event when that is this process or one of its ancestors
    (a step subprocess records its orchestrator), else this process when nothing was logged yet. When the RUN_START
    process is elsewhere (a step running on another host), nothing is recorded: None.
    """
    pid = _run_start_pid(instance, run_id)
    if pid is not None and not is_self_or_ancestor(pid):
        return None
    identity = process_identity(pid)
    tags = {
        PROCESS_TAG: json.dumps({"run_id": run_id, **json.loads(identity.to_json())}, sort_keys=True),
        PID_TAG: str(identity.pid),
        HOST_TAG: identity.host,
    }
    # with its first heartbeat, in one write
    instance.add_run_tags(run_id, {**tags, HEARTBEAT_TAG: str(int(time.time()))})
    return identity


def beat(instance: dg.DagsterInstance, run_id: str) -> None:
    """The run's process says it is alive (:data:`HEARTBEAT_TAG`)."""
    instance.add_run_tags(run_id, {HEARTBEAT_TAG: str(int(time.time()))})


def silent_for(run: dg.DagsterRun, now: float | None = None) -> float | None:
    """Seconds since the run's process last said it was alive; None when it never did (older code, or it died
    before its resources were set up)."""
    try:
        return (time.time() if now is None else now) - float(run.tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return None


def judge_run(run: dg.DagsterRun, identity: ProcessIdentity) -> Verdict:
    """:func:`core.processes.judge`, and for a process it cannot look at (another host, another container), its
    heartbeat: silent for :data:`HEARTBEAT_STALE_S` seconds, it is gone."""
    verdict = judge(identity)
    if verdict.liveness is Liveness.UNKNOWN:
        silent = silent_for(run)
        if silent is not None and silent >= HEARTBEAT_STALE_S:
            return Verdict(
                Liveness.GONE,
                f"{identity.describe()} has not been heard from for {silent:.0f} s (its container or host went away, "
                "e.g. a code server that was restarted)",
            )
    return verdict


def recorded_process(run: dg.DagsterRun) -> ProcessIdentity | None:
    """The process recorded on ``run`` by :func:`record_run_process`; None when there is none or it was recorded for
    another run (tags copied to a retry)."""
    raw = run.tags.get(PROCESS_TAG)
    if not raw:
        return None
    try:
        if json.loads(raw).get("run_id") != run.run_id:
            return None
        return ProcessIdentity.from_json(raw)
    except (ValueError, AttributeError):
        return None


# --- what recovery did -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A pool slot a run held (``pending=False``) or its step's place in a pool's queue (``pending=True``)."""

    pool: str
    step_key: str | None
    pending: bool = False


@dataclass(frozen=True)
class RecoveredRun:
    """A run whose process was gone: what it was, what it is now, and what it held."""

    run_id: str
    job_name: str
    was: str  # the status it had: STARTING, STARTED, CANCELING, or FAILURE/CANCELED/SUCCESS for a leaked slot
    now: str  # FAILURE, CANCELED, or the same finished status when only its slots were freed
    process: ProcessIdentity
    reason: str
    freed: tuple[Claim, ...]
    retried: bool = False  # Dagster's run retries re-execute it (:func:`daemon_retries`)

    def message(self) -> str:
        slots = [c for c in self.freed if not c.pending]
        queued = [c for c in self.freed if c.pending]
        # a run's steps share the slot its first step claimed (threaded_executor): that step, not the one running
        held = ", ".join(f"{c.pool} slot (claimed by its step {c.step_key} for the run)" for c in slots)
        what = []
        if self.was != self.now:
            what.append(f"marked {'failed' if self.now == 'FAILURE' else self.now.lower()}")
        what.append(f"freed its {held}" if slots else "it held no pool slot")
        if queued:
            what.append(
                f"dropped its {len(queued)} queued step(s) from the {', '.join(sorted({c.pool for c in queued}))} pool"
            )
        text = f"run {self.run_id} ({self.job_name}) was {self.was} but {self.reason}: {', '.join(what)}"
        if self.now == "FAILURE" and self.retried:
            text += (
                "; the daemon's run retries re-execute it from its failure (if no retry run starts within "
                f"{RETRY_EXPECTED_S:.0f} s: `mlops resume {self.run_id}`)"
            )
        elif self.now == "FAILURE" and not self.job_name.startswith("__"):
            text += f"; resume it with `mlops resume {self.run_id}`"
        return text


@dataclass(frozen=True)
class LeftAlone:
    """A run in progress that recovery did not touch, and why (alive, elsewhere, or no process recorded)."""

    run_id: str
    job_name: str
    status: str
    reason: str

    def message(self) -> str:
        return f"run {self.run_id} ({self.job_name}) is {self.status}: {self.reason}; left alone"


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover_dead_runs` did."""

    recovered: tuple[RecoveredRun, ...] = ()
    left_alone: tuple[LeftAlone, ...] = ()

    def messages(self) -> list[str]:
        return [r.message() for r in self.recovered]

    def of(self, run_id: str) -> RecoveredRun | LeftAlone | None:
        for entry in (*self.recovered, *self.left_alone):
            if entry.run_id == run_id:
                return entry
        return None


# --- recovery ----------------------------------------------------------------------------------------------------


def _claims(instance: dg.DagsterInstance, run_ids: Collection[str] | None = None) -> dict[str, list[Claim]]:
    """Pool slots and queued steps, by run (only of ``run_ids`` when given)."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    found: dict[str, list[Claim]] = {}
    for key in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(key)
        for slot in info.claimed_slots:
            if run_ids is None or slot.run_id in run_ids:
                found.setdefault(slot.run_id, []).append(Claim(key, slot.step_key))
        claimed = {(slot.run_id, slot.step_key) for slot in info.claimed_slots}
        for step in info.pending_steps:  # a claimed step is also in the queue (assigned): counted once
            if (run_ids is None or step.run_id in run_ids) and (step.run_id, step.step_key) not in claimed:
                found.setdefault(step.run_id, []).append(Claim(key, step.step_key, pending=True))
    return found


def _free(instance: dg.DagsterInstance, run_id: str) -> tuple[Claim, ...]:
    claims = tuple(_claims(instance, [run_id]).get(run_id, []))
    if claims:
        # what Dagster's own "free concurrency slots for run" (UI, GraphQL) and run monitoring call
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return claims


def _mark(instance: dg.DagsterInstance, run: dg.DagsterRun, verdict: Verdict) -> RecoveredRun | None:
    """Mark one run whose process is gone failed (canceled when it was being canceled) and free its slots."""
    fresh = instance.get_run_by_id(run.run_id)
    if fresh is None or fresh.status not in IN_PROGRESS:
        return None  # finished meanwhile, or another recovery got there first
    identity = recorded_process(fresh)
    assert identity is not None
    found_by = process_identity().describe()
    retried = fresh.status != dg.DagsterRunStatus.CANCELING and daemon_retries(instance, fresh)
    if fresh.status == dg.DagsterRunStatus.CANCELING:
        instance.report_run_canceled(
            fresh, f"{verdict.reason}: the run was being canceled; marked canceled by mlops recovery ({found_by})."
        )
        now = dg.DagsterRunStatus.CANCELED
    else:
        how = "re-execute it from failure in the UI"
        if retried:
            how = (
                "the daemon's run retries re-execute it from its failure (if no retry run starts within "
                f"{RETRY_EXPECTED_S:.0f} s: `mlops resume {fresh.run_id}`)"
            )
        elif not fresh.job_name.startswith("__"):  # a job of its own, not an asset selection: `mlops resume` takes it
            how = f"resume it from its failed steps with `mlops resume {fresh.run_id}` (or {how})"
        instance.report_run_failed(
            fresh,
            f"{verdict.reason} (killed or crashed): the run can never finish. Marked failed by mlops recovery "
            f"({found_by}); its pool slots are freed; {how}.",
        )
        now = dg.DagsterRunStatus.FAILURE
    freed = _free(instance, fresh.run_id)
    return RecoveredRun(
        fresh.run_id,
        fresh.job_name,
        fresh.status.value,
        now.value,
        identity,
        verdict.reason,
        freed,
        retried=retried,
    )


def recover_dead_runs(
    instance: dg.DagsterInstance, exclude: Iterable[str] = (), run_ids: Collection[str] | None = None
) -> Recovery:
    """Find the runs in progress (STARTING, STARTED, CANCELING) whose recorded process is gone on this host, mark
    each failed (a CANCELING one canceled) with a message saying why, and free its pool slots and queued steps. Also
    frees the slots still held by finished runs whose process is gone (a run marked failed by hand, or a recovery
    interrupted between the two). Runs in ``exclude`` (the caller's own run) are not looked at; ``run_ids`` limits
    the search to those runs. Runs that are alive, on another host, or without a recorded process are left alone
    (listed in the result)."""
    skip = set(exclude)
    filters = dg.RunsFilter(statuses=list(IN_PROGRESS), run_ids=list(run_ids) if run_ids is not None else None)
    recovered: list[RecoveredRun] = []
    left: list[LeftAlone] = []
    for record in instance.get_run_records(filters=filters):
        run = record.dagster_run
        if run.run_id in skip:
            continue
        identity = recorded_process(run)
        if identity is None:
            reason = (
                "no process is recorded for it (it runs elsewhere, ran older code, or died before its resources "
                "were set up): the daemon's run monitoring, or terminating it in the UI, must deal with it"
            )
            left.append(LeftAlone(run.run_id, run.job_name, run.status.value, reason))
            continue
        verdict = judge_run(run, identity)
        if verdict.liveness is not Liveness.GONE:
            left.append(LeftAlone(run.run_id, run.job_name, run.status.value, verdict.reason))
            continue
        done = _mark(instance, run, verdict)
        if done is not None:
            recovered.append(done)
    recovered += _free_leaked_slots(instance, skip | {r.run_id for r in recovered}, run_ids)
    return Recovery(tuple(recovered), tuple(left))


def _free_leaked_slots(
    instance: dg.DagsterInstance, skip: set[str], run_ids: Collection[str] | None
) -> list[RecoveredRun]:
    """Slots held by finished runs whose recorded process is gone (a finished run never needs a slot)."""
    freed: list[RecoveredRun] = []
    for run_id in _claims(instance, run_ids):
        if run_id in skip:
            continue
        run = instance.get_run_by_id(run_id)
        if run is None or not run.is_finished:
            continue  # in progress: handled above; a deleted run's slots are freed by Dagster when it is deleted
        identity = recorded_process(run)
        if identity is None:
            continue  # nothing to judge by: the daemon's free_slots_after_run_end_seconds frees it
        verdict = judge_run(run, identity)
        if verdict.liveness is not Liveness.GONE:
            continue  # its process still runs a step (it was marked failed from outside): the slot is in use
        claims = _free(instance, run_id)
        if claims:
            freed.append(
                RecoveredRun(run_id, run.job_name, run.status.value, run.status.value, identity, verdict.reason, claims)
            )
    return freed


# --- at run start ------------------------------------------------------------------------------------------------


class RecoveryWatch:
    """While a run executes: look for dead runs every ``interval`` seconds, so a step waiting for a slot that a run
    dying after this run started holds is released. What it recovers is logged on this run (``log``: the run's log
    manager, else an engine event)."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        run: dg.DagsterRun,
        log: logging.Logger | None = None,
        interval: float = WATCH_INTERVAL_S,
    ) -> None:
        self.instance, self.run, self.log, self.interval = instance, run, log, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"mlops-recovery-{run.run_id[:8]}", daemon=True)

    def start(self) -> RecoveryWatch:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                beat(self.instance, self.run.run_id)
                report = recover_dead_runs(self.instance, exclude=[self.run.run_id])
                for line in report.messages():
                    if self.log is not None:  # the run's log: its console and its event log
                        self.log.warning(f"mlops recovery: {line}")
                    else:
                        self.instance.report_engine_event(f"mlops recovery: {line}", self.run)
            except Exception:  # never let the watch break the run it watches over
                logger.warning("mlops recovery: looking for dead runs failed", exc_info=True)


def on_run_start(context: dg.InitResourceContext) -> RecoveryWatch | None:
    """What a run does when its resources are set up: record its process on the run, recover dead runs (logged on
    this run), and start the :class:`RecoveryWatch` (returned; stop it at teardown). Nothing outside a run, or when
    the resources are set up again after the run ended (to load its outputs)."""
    instance, run = context.instance, context.run
    if instance is None or run is None:
        return None
    try:
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status not in IN_PROGRESS:
            return None
        record_run_process(instance, run.run_id)
        report = recover_dead_runs(instance, exclude=[run.run_id])
    except Exception:  # recovery is a service to the run, never a reason for it to fail
        logger.warning("mlops recovery: looking for dead runs failed", exc_info=True)
        return None
    log = context.log
    for line in report.messages():
        (log.warning if log is not None else logger.warning)(f"mlops recovery: {line}")
    return RecoveryWatch(instance, current, log, interval=watch_interval_s()).start()
