"""Sensors and automation evaluated tick by tick on a real Dagster instance, without a daemon.

What ``dagster dev``'s daemon does every ``$MLOPS_SENSOR_INTERVAL_S`` seconds (30), done here on demand: evaluate
each sensor with its cursor, add the partitions it asks for, skip run keys it already ran, and evaluate the assets'
automation conditions; then execute the requested runs in this process, one at a time (so DuckDB never sees two
writing processes), each on its job's own executor as a run worker would. The decisions are made by the very sensor
and automation code that ``dagster dev`` runs; only the loop around them is ours. Used by ``mlops simulate`` and by
the tests.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Self

import dagster as dg
from dagster._core.definitions.instigation_logger import DispatchingLogHandler  # what prints a sensor's log

from mlops_assets.threaded_executor import execute_with_job_executor

RUN_KEY_TAG, SENSOR_TAG = "dagster/run_key", "dagster/sensor_name"
AUTOMATION = "automation"


@dataclass(frozen=True)
class ExecutedRun:
    """A run a tick requested and executed."""

    requested_by: str
    run_id: str
    success: bool
    assets: tuple[str, ...]
    partition: str | None
    tags: dict[str, str]


class RunInterrupted(KeyboardInterrupt):
    """A run ended because this process was asked to stop (Ctrl-C, SIGTERM): the ticker stops with it, where a run
    that failed is an outcome to go on from. Dagster catches the signal inside the run (its steps end, the run is
    marked failed) and forgets it once the run is over, so without this the loop went on to the next month."""

    def __init__(self, run: ExecutedRun) -> None:
        super().__init__(f"run {run.run_id} was interrupted")
        self.run = run


#: The signals that ask a process to stop: Ctrl-C, and what a supervisor (systemd, a container runtime) sends.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Whether SIGINT or SIGTERM arrived, whoever handled it: Dagster's own handler takes them while a run executes
    and forgets them once it ends (a signal after the run's last check for one was lost: the year went on). Python
    writes every signal's number to the wakeup fd before any handler runs; this reads them. Main thread only."""

    def __enter__(self) -> Self:
        self._read, self._write = socket.socketpair()
        for end in (self._read, self._write):
            end.setblocking(False)
        self._previous = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        return self

    def received(self) -> bool:
        """Whether a stop signal came since the last look."""
        try:
            numbers = self._read.recv(4096)
        except BlockingIOError:
            return False
        return bool(set(STOP_SIGNALS) & set(numbers))

    def __exit__(self, *_: object) -> None:
        signal.set_wakeup_fd(self._previous)
        self._read.close()
        self._write.close()


def _console_of(sensor: str) -> logging.Handler:
    """A sensor's warnings as ``HH:MM:SS  <sensor>  <message>``, the runs' progress lines' shape, on stderr as they
    are (a sensor is evaluated between runs: nothing captures the stream then)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s  {sensor:<44} %(message)s", datefmt="%H:%M:%S"))
    return handler


def _interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Whether the run ended on a termination request (its failure is Dagster's execution-interrupted error)."""
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            error = getattr(event.event_specific_data, "error", None)
            if error is not None and error.cls_name == "DagsterExecutionInterruptedError":
                return True
    return False


def apply_partition_requests(
    instance: dg.DagsterInstance,
    requests: Sequence[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest],
) -> bool:
    """Apply a sensor's partition requests in order, as Dagster's daemon does; whether any partition changed."""
    changed = False
    for request in requests:
        known = set(instance.get_dynamic_partitions(request.partitions_def_name))
        if isinstance(request, dg.DeleteDynamicPartitionsRequest):
            for key in (k for k in request.partition_keys if k in known):
                instance.delete_dynamic_partition(request.partitions_def_name, key)
                changed = True
        else:
            missing = [k for k in request.partition_keys if k not in known]
            if missing:
                instance.add_dynamic_partitions(request.partitions_def_name, missing)
                changed = True
    return changed


@dataclass
class Ticker:
    """Evaluates ``sensors`` (in this order, then the automation conditions) and executes what they request."""

    defs: dg.Definitions
    instance: dg.DagsterInstance
    sensors: Sequence[str]
    automation: bool = True
    on_run: Callable[[ExecutedRun], None] | None = None
    #: Dagster's console log level for the runs (the ticker's caller reports what happened)
    log_level: str = "WARNING"
    #: told after each run whether a stop was asked for (``StopSignals.received``): then no further run starts
    stop_requested: Callable[[], bool] | None = None
    cursors: dict[str, str | None] = field(default_factory=dict)
    automation_cursor: object | None = None
    #: what the instance looked like when the automation conditions were last evaluated (None: not yet), and whether
    #: this ticker changed it since (a run, a sensor's event or partition)
    _evaluated_state: tuple[object, ...] | None = field(default=None, init=False, repr=False)
    _changed: bool = field(default=True, init=False, repr=False)
    _partition_names: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._partition_names = _dynamic_partition_names(self.defs)

    def _instance_state(self) -> tuple[object, ...]:
        """What the automation conditions read from the instance, in brief: its newest event record (materializations,
        checks, run starts and ends), its number of runs and the dynamic partitions. Equal states, equal decisions."""
        partitions = tuple(tuple(self.instance.get_dynamic_partitions(name)) for name in self._partition_names)
        return self.instance.event_log_storage.get_maximum_record_id(), self.instance.get_runs_count(), partitions

    def _already_ran(self, sensor: str, run_key: str) -> bool:
        return bool(
            self.instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_TAG: sensor}), limit=1)
        )

    def _execute(
        self,
        requested_by: str,
        job: dg.JobDefinition,
        partition: str | None,
        tags: dict[str, str],
        assets: Sequence[dg.AssetKey] | None = None,
        checks: Sequence[dg.AssetCheckKey] | None = None,
    ) -> ExecutedRun:
        run_config = {"loggers": {"console": {"config": {"log_level": self.log_level}}}}
        if checks is not None:  # the request names its checks: the run is the job's subset of assets and checks
            job = job.get_subset(asset_selection=set(assets or ()), asset_check_selection=set(checks))
            assets = None
        result = execute_with_job_executor(  # as the daemon's run worker would: the job's own executor
            job,
            run_config=run_config,
            instance=self.instance,
            partition_key=partition,
            tags=tags,
            asset_selection=assets,
            raise_on_error=False,
        )
        materialized = tuple(
            sorted({e.asset_key.to_user_string() for e in result.get_asset_materialization_events() if e.asset_key})
        )
        run = ExecutedRun(requested_by, result.run_id, result.success, materialized, partition, dict(tags))
        self._changed = True
        if self.on_run:
            self.on_run(run)
        if _interrupted(result) or (self.stop_requested is not None and self.stop_requested()):
            raise RunInterrupted(run)
        return run

    def execute_job(self, name: str, tags: dict[str, str]) -> ExecutedRun:
        """Run a job by hand (what a person launching it from the UI would do)."""
        return self._execute(tags.get("mlops/trigger", "manual"), self.defs.resolve_job_def(name), None, tags)

    def evaluate_sensor(self, name: str) -> list[ExecutedRun]:
        """One tick of one sensor: its cursor advances and its new run requests execute."""
        sensor = self.defs.resolve_sensor_def(name)
        # the sensor's own function, as the daemon calls it (its result is resolved below as the daemon would)
        with dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(name),
            resources=self.defs.resources,
            sensor_name=name,
            definitions=self.defs,
        ) as context:
            # warnings and errors only: what it decided is printed by the simulation, a line per month
            context.log.setLevel(logging.WARNING)
            # said as the runs' progress lines are, not in Dagster's console format among them
            for handler in [h for h in context.log.handlers if isinstance(h, DispatchingLogHandler)]:
                context.log.removeHandler(handler)
            context.log.addHandler(_console_of(name))
            data = sensor(context)
        if not isinstance(data, dg.SensorResult):
            raise TypeError(f"sensor {name} returned {type(data).__name__}; the ticker expects a SensorResult")
        self.cursors[name] = data.cursor
        for event in (
            data.asset_events or []
        ):  # a decision the sensor recorded (e.g. a rollback), as the daemon stores it
            self.instance.report_runless_asset_event(event)
            self._changed = True
        if apply_partition_requests(self.instance, data.dynamic_partitions_requests or []):
            self._changed = True
        runs = []
        for request in data.run_requests or []:
            if request.run_key and self._already_ran(name, request.run_key):
                continue  # the daemon drops a run key a sensor already used
            job = self.defs.get_repository_def().get_job(request.job_name or sensor.job_name)
            tags = {**request.tags, SENSOR_TAG: name, **({RUN_KEY_TAG: request.run_key} if request.run_key else {})}
            selection = list(request.asset_selection) if request.asset_selection else None
            checks = list(request.asset_check_keys) if request.asset_check_keys is not None else None
            runs.append(self._execute(name, job, request.partition_key, tags, selection, checks))
        return runs

    def evaluate_automation(self) -> list[ExecutedRun]:
        """One tick of the automation conditions: requested partitions run grouped by partition (one run each).

        Skipped when nothing changed since the last evaluation requested nothing (no run, no event, no partition):
        the conditions would decide the same (the monthly refresh benchmark's sensor and automation ticks together:
        0.23 s a month, median over 2013-04..12)."""
        state = self._instance_state()
        if not self._changed and state == self._evaluated_state:
            return []
        self._changed, self._evaluated_state = False, state
        self.automation_cursor, requested = evaluate_automation_conditions(
            self.defs, self.instance, self.automation_cursor
        )
        by_partition: dict[str | None, list[dg.AssetKey]] = defaultdict(list)
        for key, partitions in requested.items():
            for partition in partitions:
                by_partition[partition].append(key)
        job = self.defs.resolve_implicit_global_asset_job_def()
        runs = []
        # partitioned (monthly) work first: retraining reads what the monthly assets write
        for partition in sorted(by_partition, key=lambda p: (p is None, p or "")):
            tags = {SENSOR_TAG: AUTOMATION, "mlops/trigger": "automation"}
            runs.append(self._execute(AUTOMATION, job, partition, tags, by_partition[partition]))
        return runs

    def tick(self) -> list[ExecutedRun]:
        runs: list[ExecutedRun] = []
        for name in self.sensors:
            runs += self.evaluate_sensor(name)
            if self.automation:
                runs += self.evaluate_automation()
        return runs

    def settle(self, max_ticks: int = 8) -> list[ExecutedRun]:
        """Tick until a tick requests nothing (everything the sensors and conditions wanted has run)."""
        runs: list[ExecutedRun] = []
        for _ in range(max_ticks):
            new = self.tick()
            runs += new
            if not new:
                return runs
        raise RuntimeError(
            f"sensors and automation still requested runs after {max_ticks} ticks: {[r.assets for r in new]}"
        )


def evaluate_automation_conditions(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: object | None
) -> tuple[object, dict[dg.AssetKey, set[str | None]]]:
    """One evaluation of every automation condition of ``defs``: the new cursor and the partitions requested per asset
    (asset checks run with their asset, so only assets are returned).

    What ``dg.evaluate_automation_conditions`` (Dagster's testing API, 1.13) does, with one difference: the new cursor
    is built inside the evaluation's own partition loading context, whose dynamic partitions are cached per
    evaluation, as the automation daemon builds it (``AutomationTickEvaluationContext``). The testing API builds it
    against the bare instance: one storage query per partition subset in the cursor (a profiled replayed year:
    6,638 queries, 24.6 s of 105 s). The decisions are the same (a test compares both, tick after tick); only the
    cursor's construction is cheaper.
    """
    from dagster._core.definitions.asset_daemon_cursor import AssetDaemonCursor
    from dagster._core.definitions.declarative_automation.automation_condition_evaluator import (
        AutomationConditionEvaluator,
    )
    from dagster._core.definitions.partitions.context import partition_loading_context

    graph = defs.resolve_asset_graph()
    selection = dg.AssetSelection.all(include_sources=True) | dg.AssetSelection.all_asset_checks()
    # the cursor goes through its stored form, as the daemon reads it back from storage at every tick
    previous = (
        dg.deserialize_value(dg.serialize_value(cursor), AssetDaemonCursor)  # type: ignore[arg-type]
        if cursor is not None
        else AssetDaemonCursor.empty()
    )
    evaluator = AutomationConditionEvaluator(
        asset_graph=graph,
        instance=instance,
        entity_keys={
            key
            for key in selection.resolve(graph) | selection.resolve_checks(graph)
            if graph.get(key).automation_condition is not None
        }
        | graph.automatable_asset_job_keys,
        emit_backfills=False,
        logger=logging.getLogger("mlops_assets.ticks"),
        cursor=previous,
        evaluation_id=previous.evaluation_id,
    )
    results, requested_subsets = evaluator.evaluate()
    with partition_loading_context(new_ctx=evaluator.asset_graph_view.partition_loading_context):
        new_cursor = previous.with_updates(
            evaluation_timestamp=evaluator.evaluation_time.timestamp(),
            newly_observe_requested_asset_keys=[],
            evaluation_id=previous.evaluation_id + 1,
            condition_cursors=[result.get_new_cursor() for result in results],
            asset_graph=graph,
        )
        requested: dict[dg.AssetKey, set[str | None]] = defaultdict(set)
        for subset in requested_subsets:
            if isinstance(subset.key, dg.AssetKey):
                for asset_partition in subset.expensively_compute_asset_partitions():
                    requested[asset_partition.asset_key].add(asset_partition.partition_key)
    return new_cursor, dict(requested)


def _dynamic_partition_names(defs: dg.Definitions) -> list[str]:
    """The names of the dynamic partitions the assets of ``defs`` are partitioned by."""
    graph = defs.resolve_asset_graph()
    names = set()
    for key in graph.get_all_asset_keys():
        partitions = graph.get(key).partitions_def
        if isinstance(partitions, dg.DynamicPartitionsDefinition) and partitions.name:
            names.add(partitions.name)
    return sorted(names)
