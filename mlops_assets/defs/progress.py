"""What a run prints on its console: a line per step that has something to say, not Dagster's DEBUG stream.

Only the console changes: the instance's event log still records every event (the UI and ``mlops runs`` read it).
A run gets it from its run config (``loggers: console: config: log_level: INFO``): ``make pipeline`` passes
``mlops_assets/progress.yaml`` to ``dagster job execute -c``, the replayed year's runs (``mlops simulate``) ask
for ``WARNING``, and ``mlops resume`` keeps the run config of the run it resumes. Without it (a run from the UI, the
daemon's runs) Dagster's own console logger prints its DEBUG stream to the run's output as usual.
``log_level: DEBUG`` prints Dagster's whole stream here too, in Dagster's own format.
"""

import ast
import io
import logging
import os
import re
import sys
import time
import weakref
from collections.abc import Mapping
from typing import IO, Any

import dagster as dg
from dagster._core.definitions.dependency import NodeHandle

#: The run config that gives a run this console (what ``mlops_assets/progress.yaml`` holds).
PROGRESS_CONSOLE_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

#: Dagster events worth a line at INFO even though Dagster logs them at DEBUG.
_RUN_EVENTS = {"PIPELINE_START": "started", "PIPELINE_SUCCESS": "succeeded", "PIPELINE_FAILURE": "FAILED"}


def step_label(step_key: str | None, check_steps: Mapping[str, str] | None = None) -> str:
    """``flight_delay__challenger`` -> ``flight_delay/challenger``: the asset key the UI shows (the step key joins the
    key's parts with ``__``). A check's own step reads as its asset and check (``check_steps``, from
    :func:`check_step_labels`): its step key glues the check's name to the asset's (``flight_delay__champion_``
    ``champion_is_servable``)."""
    if step_key and check_steps and step_key in check_steps:
        return check_steps[step_key]
    return (step_key or "").replace("__", "/")


def check_step_labels(job: dg.JobDefinition | None) -> dict[str, str]:
    """Step key -> ``flight_delay/champion check champion_is_servable`` for each step of ``job`` that runs a check and
    materializes nothing (a check an asset's step evaluates itself is left out: that step is the asset's)."""
    if job is None:
        return {}
    labels = {}
    for node in job.graph.nodes:
        keys = job.asset_layer.get_selected_entity_keys_for_node(NodeHandle(node.name, parent=None))
        if len(keys) == 1 and isinstance(key := next(iter(keys)), dg.AssetCheckKey):
            labels[node.name] = f"{key.asset_key.to_user_string()} check {key.name}"
    return labels


#: Dagster's message for a step it does not run because a step it needs failed or was not run either
#: (``ActiveExecution``): "Dependencies for step <key> failed: [...] were not executed: [...]. Not executing."
_NOT_RUN = re.compile(
    r"^Dependencies for step \S+(?: failed: (?P<failed>\[[^\]]*\]))?(?: were not executed: (?P<skipped>\[[^\]]*\]))?"
    r"\. Not executing\.$"
)


def not_run_line(message: str, check_steps: Mapping[str, str] | None = None) -> str | None:
    """``not run: flight_delay/training_set failed`` for Dagster's "Dependencies for step ... Not executing." message
    (None for any other message: it is printed as it is)."""
    found = _NOT_RUN.match(message)
    if found is None or not (found["failed"] or found["skipped"]):
        return None
    reasons = []
    for group, why in (("failed", "failed"), ("skipped", "not run")):
        if found[group]:
            keys = ", ".join(step_label(key, check_steps) for key in ast.literal_eval(found[group]))
            reasons.append(f"{keys} {why}")
    return "not run: " + "; ".join(reasons)


def root_cause(error: Any) -> str | None:
    """The innermost error of a step failure (what the step itself raised), in one line: Dagster wraps it in an
    "Error occurred while executing op" error whose message says nothing about the reason. A ``dg.Failure`` on the
    way is the step's own explanation and ends the walk (what it was raised from is for the event log)."""
    if error is None:
        return None
    while getattr(error, "cls_name", None) != "Failure" and getattr(error, "cause", None) is not None:
        error = error.cause
    if getattr(error, "cls_name", None) == "DagsterExecutionInterruptedError":  # carries no message of its own
        return "interrupted (Ctrl-C, SIGTERM, or the run terminated from the UI): the steps that had ended are kept"
    message = " ".join(str(error.message).split())
    if getattr(error, "cls_name", None) == "Failure":  # dg.Failure: a step's own explanation, said without its class
        message = message.split(": ", 1)[-1]
    return message


class ProgressFormatter(logging.Formatter):
    """``HH:MM:SS  <step>  <message>`` for the messages of steps, failed steps and checks, and the run's start/end."""

    def __init__(self, threshold: int = logging.INFO, check_steps: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.threshold = threshold
        self.check_steps = dict(check_steps or {})
        self._started: float | None = None

    def line(self, record: logging.LogRecord) -> str | None:
        """The line to print for ``record``, or None to print nothing."""
        meta: dict[str, Any] = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        label = step_label(meta.get("step_key"), self.check_steps)
        message = str(meta.get("orig_message") or record.getMessage())
        if event is None:  # a step's own message (context.log.info/warning/error), or the engine's about a step
            if record.levelno < self.threshold:
                return None
            message = not_run_line(message, self.check_steps) or message
            return f"{label:<44} {message}" if label else message
        kind = event.event_type_value
        if kind in _RUN_EVENTS and (self.threshold <= logging.INFO or kind == "PIPELINE_FAILURE"):
            job = meta.get("job_name") or "run"
            if kind == "PIPELINE_START":
                self._started = record.created
                return f"{job}: run {str(meta.get('run_id'))[:8]} {_RUN_EVENTS[kind]}"
            took = f" in {record.created - self._started:.1f} s" if self._started is not None else ""
            # a run that failed before any step (its executor refused it): the reason, which no step line gave
            cause = (
                root_cause(getattr(event.event_specific_data, "error", None)) if kind == "PIPELINE_FAILURE" else None
            )
            return f"{job}: {_RUN_EVENTS[kind]}{took}" + (f": {cause}" if cause else "")
        if kind == "STEP_FAILURE":
            detail = root_cause(getattr(event.event_specific_data, "error", None)) or message
            return f"{label:<44} FAILED: {detail}"
        if kind == "ASSET_CHECK_EVALUATION":
            check = event.event_specific_data
            if check.passed:
                return None
            severity = "failed" if check.severity == dg.AssetCheckSeverity.ERROR else "warns"
            asset = check.asset_key.to_user_string()  # the asset's label, whichever step evaluated the check
            return f"{asset:<44} check {check.check_name} {severity}: {check.description or ''}"
        if kind == "STEP_UP_FOR_RETRY" or record.levelno >= logging.ERROR:
            return f"{label:<44} {message}"
        return None

    def format(self, record: logging.LogRecord) -> str:
        text = self.line(record) or ""
        return f"{time.strftime('%H:%M:%S', time.localtime(record.created))}  {text}"


class _PrintsSomething(logging.Filter):
    def __init__(self, formatter: ProgressFormatter) -> None:
        super().__init__()
        self.formatter = formatter

    def filter(self, record: logging.LogRecord) -> bool:
        return self.formatter.line(record) is not None


def terminal_stderr() -> IO[str]:
    """A stream on a duplicate of this process's stderr, taken when the run starts, before any step runs.

    Dagster captures the steps' stdout and stderr into the run's compute log file and mirrors that file to the
    terminal through ``tail -F``, which it stops as soon as the steps end: on a busy machine the last lines (a step's
    FAILED line) never reached the terminal (dagster issue #23336; seen in this suite's parallel runs). Written to the
    duplicate, the lines bypass the capture: they appear at once and in order. The event log keeps what they say."""
    try:
        fd = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return sys.stderr  # not a file descriptor (a test's in-memory stream): nothing captures it at that level
    return os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace")


@dg.logger(
    config_schema={
        "log_level": dg.Field(
            str,
            is_required=False,
            default_value="INFO",
            description="INFO: the steps' own messages, failures, failed checks and the run's start and end. "
            "DEBUG: Dagster's whole event stream, in its own format.",
        )
    },
    description="The run's console: a line per step that has something to say (the event log keeps everything).",
)
def progress_console(init_context: dg.InitLoggerContext) -> logging.Logger:
    level = str(init_context.logger_config["log_level"]).upper()
    if level == "DEBUG":  # the whole stream, as Dagster prints it
        return dg.colored_console_logger.logger_fn(init_context)
    # Dagster logs its events at DEBUG: every record reaches the handler, whose filter picks what is printed
    logger = logging.Logger("mlops", level=logging.DEBUG)  # noqa: LOG001 (one per run, never the global registry)
    stream = terminal_stderr()
    handler = logging.StreamHandler(stream)
    if stream is not sys.stderr:  # a long-lived process runs many runs: each run's duplicate is closed with its logger
        weakref.finalize(handler, stream.close)
    threshold = logging.getLevelNamesMapping().get(level, logging.INFO)
    formatter = ProgressFormatter(threshold, check_step_labels(init_context.job_def))
    handler.setFormatter(formatter)
    handler.addFilter(_PrintsSomething(formatter))
    logger.addHandler(handler)
    return logger
