"""``mlops``: the platform's command line.

    mlops replay --through 2013-03     land Jan..Mar 2013 as the production feed would (idempotent), add the months
    mlops replay --month 2013-04       land one more month
    mlops land FILE --table T [--month M]  land a file of one's own as a batch, with its checksum file (refused when
                                       not the table's columns, unless --unchecked)
    mlops months [--tags]              landed months (--tags: the run tags that make a job cover all of them)
    mlops models [--json]              every registered model: feed, champion and its evaluation metrics
    mlops status [--model M] [--json]  landed months, rows, quarantine, features; per model versions, aliases, events
    mlops quarantine [--table T] ...   rejected rows: counts by table, month, stage, rule; or a table's rows and reasons
    mlops runs [--model M] [--last N]  a model's training runs side by side: params, data hash, metrics
    mlops rollback [--model M] [--to]  move a model's champion back by hand (recorded in its event log)
    mlops promote [--model M] --to V   make a version the champion by hand, gates bypassed (logged; rollback undoes)
    mlops shadow [--model M] --to V    the version scoring beside the champion, never answering (--off: none)
    mlops resume [--model M] RUN_ID... re-execute failed runs from their failed step (Dagster re-execution)
    mlops simulate [--model M] ...     replay a year from empty: sensors and automation retrain and promote; timeline
    mlops home                         prepare $DAGSTER_HOME (dagster.yaml from the repo) and print its path
    mlops serve [--model M] [--port]   the prediction service for every model (FastAPI on uvicorn, 127.0.0.1:8000);
                                       --model picks the one `POST /predict` answers

Every model-specific command takes ``--model NAME`` (default: the first registered model, ``flight_delay``).
"""

import argparse
import contextlib
import difflib
import errno
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb

from mlops_assets.catalog import CATALOG
from mlops_assets.core.catalog import CatalogError
from mlops_assets.core.landing import (
    LandedFile,
    current_month,
    incomplete_months,
    land_file,
    landed_months,
    month_range,
    parse_month,
    reference_files,
    scan_landing,
    shift_month,
    unlanded_references,
)
from mlops_assets.core.records import json_safe
from mlops_assets.core.registry import (
    SHADOW,
    Registry,
    RegistryDamaged,
    RegistryIntegrityError,
    examine,
    repair,
    rollback,
)
from mlops_assets.core.settings import (
    DAGSTER_POSTGRES_URL_ENV,
    Settings,
    SettingsError,
    in_image,
    load_settings,
    prepare_dagster_home,
    train_hint,
)
from mlops_assets.core.specs import FeedSpec, ModelSpec, TableSpec
from mlops_assets.core.status import format_models, format_runs, format_status, model_overview, store_status

REPLAYABLE = [f for f in CATALOG.feeds if f.replay is not None]


def _month(value: str) -> str:
    try:
        parse_month(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return value


def _model(args: argparse.Namespace) -> ModelSpec:
    """The model ``--model`` names (the default model without it); exits with the registered names when unknown."""
    try:
        return CATALOG.model(getattr(args, "model", None))
    except CatalogError as error:
        raise SystemExit(f"error: {error}") from None


def _registry(settings: Settings, model: ModelSpec) -> Registry:
    return Registry(settings.model(model.name).registry_dir)


def _instance_home(settings: Settings) -> str:
    """The Dagster home the pipeline commands use (``$DAGSTER_HOME``, else the data directory's), created with the
    repo's instance settings when it does not exist yet."""
    home = str(prepare_dagster_home(settings.dagster_home))
    os.environ["DAGSTER_HOME"] = home
    return home


def register_landed_months(settings: Settings) -> list[str]:
    """Make every landed month a partition of the Dagster instance (idempotent); return the new ones."""
    import dagster as dg  # only the commands that touch the instance need Dagster

    from mlops_assets.defs.ingest import landed_observations
    from mlops_assets.defs.partitions import register_months

    months = landed_months(settings.landing_dir, [t.name for f in CATALOG.feeds for t in f.monthly_tables])
    _instance_home(settings)
    with dg.DagsterInstance.get() as instance:
        _recover_dead_runs(instance)  # the new months start runs (landing sensor): a dead run must not hold them back
        new = register_months(instance, months)
        # what landed, as the landing sources' data versions (the UI's lineage starts there)
        for observation in landed_observations(instance, CATALOG.tables, scan_landing(settings.landing_dir)):
            instance.report_runless_asset_event(observation)
        return new


def _recover_dead_runs(instance: Any = None) -> None:
    """Before a command starts runs: runs whose process is gone on this host (``kill -9``, a crash) are marked failed
    and their pool slots freed (``mlops_assets.recovery``); each is reported on stderr."""
    import dagster as dg

    from mlops_assets.recovery import recover_dead_runs

    with contextlib.nullcontext(instance) if instance is not None else dg.DagsterInstance.get() as opened:
        for line in recover_dead_runs(opened).messages():
            print(f"recovered: {line}", file=sys.stderr)


def cmd_replay(args: argparse.Namespace) -> int:
    settings = load_settings()
    feed: FeedSpec = next(f for f in REPLAYABLE if f.name == args.feed)
    if args.month:
        if args.start:
            print("error: --from goes with --through; --month lands exactly one month", file=sys.stderr)
            return 2
        months = [args.month]
    else:
        start = args.start or feed.first_month
        try:
            months = month_range(start, args.through)
        except ValueError as error:  # e.g. --from after --through
            hint = "give --from at or before --through" if args.start else f"{feed.name} starts at {start}"
            print(f"error: {error}: {hint}", file=sys.stderr)
            return 2
    outside = feed.months_without_data(months)
    if outside:  # said before anything is landed, not after "Landing ..."
        print(
            f"error: {feed.name} covers {feed.first_month}..{feed.last_month}; {', '.join(outside)} has no data",
            file=sys.stderr,
        )
        return 2
    _instance_home(settings)  # its storage settings checked (a PostgreSQL URL) before anything lands
    every = f" (every {args.every}th row)" if args.every > 1 else ""
    print(f"Landing {len(months)} month(s) of {feed.name} into {settings.landing_dir}{every}")
    counts = {"landed": 0, "replaced": 0, "unchanged": 0}
    started = time.perf_counter()

    def progress(landed: LandedFile, status: str, rows: int) -> None:
        counts[status] += 1
        print(f"  {status:<9} {landed.relative_name:<28} {rows:>7,} rows  sha256 {landed.sha256[:12]}")

    assert feed.replay is not None
    try:
        feed.replay(settings.landing_dir, months, args.every, progress)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    new = register_landed_months(settings)
    elapsed = time.perf_counter() - started
    partitions = f"; new partitions: {', '.join(new)}" if new else ""
    print(
        f"Done in {elapsed:.1f} s: {counts['landed']} new, {counts['replaced']} replaced, {counts['unchanged']} unchanged{partitions}."
    )
    if args.month and counts["landed"] + counts["replaced"] and in_image():
        print(f"Next: the stack's landing sensor refreshes {args.month} by itself (validation, features, monitoring).")
    elif args.month and counts["landed"] + counts["replaced"]:
        # (a range is what `make pipeline` lands before running the job itself: no hint in the middle of its output)
        print(
            f"Next: with `make ui` running, the landing sensor refreshes {args.month} by itself (validation, features,\n"
            f"      monitoring, a retrain if it drifted); or `make pipeline THROUGH={args.month}` lands every month up to it\n"
            "      in full and runs training_pipeline over them."
        )
    return 0


def cmd_land(args: argparse.Namespace) -> int:
    """Land a file of one's own (a production batch) as the feed would: atomically, with its checksum file, the month
    made a partition. What the landing sensor or `dagster job execute` then does with it is the same as for a replay."""
    settings = load_settings()
    table = next((t for f in CATALOG.feeds for t in f.tables if t.name == args.table), None)
    if table is None:
        known = ", ".join(t.name for f in CATALOG.feeds for t in f.tables)
        print(f"error: no table {args.table!r}; the feeds' tables: {known}", file=sys.stderr)
        return 2
    if table.monthly != (args.month is not None):
        need = "give --month YYYY-MM (the month its rows are from)" if table.monthly else "drop --month"
        kind = "a monthly table" if table.monthly else "a reference table (one file, no month)"
        print(f"error: {table.name} is {kind}: {need}", file=sys.stderr)
        return 2
    if args.month is not None and args.month > current_month():
        print(
            f"error: {args.month} is after the current month: a batch cannot hold the future (a wrong year?); give "
            "the month its rows are from",
            file=sys.stderr,
        )
        return 2
    try:
        data = args.file.read_bytes()
    except OSError as error:
        print(f"error: cannot read {args.file}: {error.strerror or error}", file=sys.stderr)
        return 2
    if not args.unchecked and (problem := _unlandable(data, table)):
        print(
            f"error: {args.file} not landed: {problem.rstrip('.')}{'' if problem.endswith('?') else '.'} Fix the "
            "file (or land it with --unchecked, and the pipeline rejects it, keeping every row in quarantine)",
            file=sys.stderr,
        )
        return 2
    _instance_home(settings)  # its storage settings checked before anything lands
    landed, status = land_file(settings.landing_dir, table.name, args.month, data)
    print(f"  {status:<9} {landed.relative_name:<28} {len(data):>11,} bytes  sha256 {landed.sha256[:12]}")
    if args.unchecked and (problem := _unlandable(data, table)):
        print(f"  unchecked: {problem}: the pipeline will reject it whole, keeping it in quarantine")
    new = register_landed_months(settings) if args.month else []
    if status == "unchanged":
        print("Those bytes had landed already: nothing new to refresh (a missing checksum file was written again).")
    elif in_image():
        print("Next: the stack's landing sensor validates it and refreshes what reads it, by itself.")
    else:
        added = f" ({', '.join(new)} added as a partition)" if new else ""
        print(
            f"Landed{added}. Next: `make ui`, whose landing sensor validates it and refreshes what reads it, or\n"
            "      `make train`: training_pipeline over every landed month. A rejection says why (`mlops status`,\n"
            "      quarantine.batches); the last accepted data keeps serving."
        )
    return 0


def _unlandable(data: bytes, table: TableSpec) -> str | None:
    """Why the pipeline would reject this file whole at its first stage (unreadable, empty, or not the table's
    columns and types), said before it lands; None when it would get past that stage. Its rows are judged later."""
    from mlops_assets.core.contracts import BatchUnreadableError, read_batch, structure_problems

    try:
        frame = read_batch(data)
    except BatchUnreadableError as error:
        return str(error)
    problems = [message for _, _, message in structure_problems(dict(frame.schema), table.columns)]
    if problems:
        more = f" and {len(problems) - 4} more" if len(problems) > 4 else ""
        matches = [
            t.name for t in CATALOG.tables if t.name != table.name and not structure_problems(frame.schema, t.columns)
        ]
        hint = f" (they are the {matches[0]} table's: --table {matches[0]}?)" if matches else ""
        return f"its columns are not the {table.name} contract's: {'; '.join(problems[:4])}{more}{hint}"
    if frame.height == 0:
        return "it holds no row (an empty month is a broken feed, not a quiet month)"
    return None


def cmd_months(args: argparse.Namespace) -> int:
    """The landed months, or (``--tags``) the run tags that make a job cover all of them, as JSON."""
    from mlops_assets.defs.run_tags import range_tags

    settings = load_settings()
    tables = [t.name for f in CATALOG.feeds for t in f.monthly_tables]
    months = landed_months(settings.landing_dir, tables)
    if not months:
        print("error: no month has landed yet: run `mlops replay --through 2013-03` first", file=sys.stderr)
        _no_tags(args)
        return 1
    references = [t.name for f in CATALOG.feeds for t in f.reference_tables]
    unlanded = unlanded_references(settings.landing_dir, references)
    if unlanded:  # no month can run without them
        files = reference_files(unlanded)
        print(
            f"error: the reference table(s) {', '.join(unlanded)} have not landed: land {files} "
            f"or run `mlops replay --through {months[-1]}`",
            file=sys.stderr,
        )
        _no_tags(args)
        return 1
    future = [m for m in months if m > current_month()]
    if future:
        # rejected at raw (month_in_future) whatever they hold: a range through them would fail every run
        for month in future:
            landed = [t for t in tables if (settings.landing_dir / t / f"{month}.parquet").exists()]
            files = ", ".join(f"landing/{t}/{month}.parquet" for t in landed)
            print(
                f"note: {month} is after the current month, left out: a batch cannot hold the future (a wrong year "
                f"in its name?); remove {files} with their .sha256 files, then land the rows under their month "
                "(`mlops land FILE --table T --month YYYY-MM`)",
                file=sys.stderr,
            )
        months = [m for m in months if m not in future]
        if not months:
            print(
                "error: every landed month is after the current one: land the rows under their month", file=sys.stderr
            )
            _no_tags(args)
            return 1
    incomplete = {m: t for m, t in incomplete_months(settings.landing_dir, tables).items() if m not in future}
    if incomplete:
        # a run over a month some table has not landed for fails at that table's ingest: the range stops before the
        # first such month, which waits (as the landing sensor waits) until its files land
        ready = [m for m in months if m < min(incomplete)]
        for month, missing in incomplete.items():
            print(
                f"note: {month} waits for {', '.join(missing)} "
                f"(land {', '.join(f'{t}/{month}.parquet' for t in missing)}: `mlops land FILE --table "
                f"{missing[0]} --month {month}`, or `mlops replay --month {month}` for the packaged data)",
                file=sys.stderr,
            )
        if not ready:
            print(f"error: no landed month is complete before {min(incomplete)}: land the files above", file=sys.stderr)
            _no_tags(args)
            return 1
        if ready[-1] != months[-1]:
            print(f"note: the months covered end at {ready[-1]}", file=sys.stderr)
        months = ready
    gap = next((shift_month(a, 1) for a, b in itertools.pairwise(months) if shift_month(a, 1) != b), None)
    if gap is not None:
        # no table landed for a month between two landed ones: a range over it fails at the later month's features
        # (their look-back reads the gap), so it stops before the gap, as before a month a table has not landed for
        months = [m for m in months if m < gap]
        print(
            f"note: nothing has landed for {gap}: land it (`mlops replay --month {gap}` for the packaged data, or "
            f"`mlops land FILE --table T --month {gap}`); the months covered end at {months[-1]}",
            file=sys.stderr,
        )
    if args.tags:
        # a range names partitions: months landed by hand, with no daemon yet, are made partitions here (else the
        # job refused the range with a traceback naming "nonexistent partition keys")
        register_landed_months(settings)
    print(json.dumps(range_tags(months)) if args.tags else "\n".join(months))
    return 0


def _no_tags(args: argparse.Namespace) -> None:
    """With --tags and no month to run: empty tags on stdout, so that `dagster job execute --tags "$(mlops months
    --tags)"` still gets valid JSON rather than an empty string (`make pipeline` stops on the exit status first: a run
    without a range fails in Dagster before any step can say why, once a landing source has been observed)."""
    if args.tags:
        print("{}")


def cmd_models(args: argparse.Namespace) -> int:
    settings = load_settings()
    overviews = [model_overview(m, _registry(settings, m)) for m in CATALOG.models]
    if args.json:
        print(json.dumps(json_safe({"default": CATALOG.default.name, "models": overviews}), indent=2, allow_nan=False))
        return 0
    print(format_models(overviews))
    print(where_and_next(settings, overviews))
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter to read and to copy)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def next_replay_month(settings: Settings) -> str | None:
    """The month after the newest landed one, when a replayable feed has data for it (the next step of the loop)."""
    months = landed_months(settings.landing_dir, [t.name for f in REPLAYABLE for t in f.monthly_tables])
    if not months:
        return None
    following = shift_month(months[-1], 1)
    return following if any(not feed.months_without_data([following]) for feed in REPLAYABLE) else None


def where_and_next(settings: Settings, overviews: list[dict[str, Any]]) -> str:
    """Where each champion's evaluation report is, and what to try next (the end of ``make pipeline``)."""
    lines = ["", "Evaluation reports (Markdown with ROC, calibration, per-slice and importance plots):"]
    for overview in overviews:
        champion = overview["champion"]
        report = settings.model(overview["name"]).reports_dir / "evaluation" / str(champion) / "report.md"
        shown = _shown(report) if champion and report.exists() else "none yet (no champion)"
        lines.append(f"  {overview['name']:<22}{shown}")
    if in_image():  # the compose stack: its UI and service already run (deploy/README.md)
        if not any(overview["champion"] for overview in overviews):
            lines += ["Next: " + train_hint()]
        return "\n".join(lines)
    if not any(overview["champion"] for overview in overviews):
        lines += ["Next:", "  make pipeline   land Jan-Mar 2013 and train every model (then this lists them)"]
        return "\n".join(lines)
    steps = [
        (
            "make ui",
            (
                "the Dagster UI on http://127.0.0.1:3000: the asset graph, runs, checks, and the sensors that "
                "refresh, retrain and roll back by themselves"
            ),
        ),
        ("make serve", "the prediction service on http://127.0.0.1:8000 (API docs at /docs)"),
        (
            "make simulate",
            "replay 2013 month by month: drift, retraining, promotion and rollback with nobody at the keyboard",
        ),
        (f"{_this_command()} status", "what the platform holds: months, quarantined rows, features, models"),
    ]
    month = next_replay_month(settings)
    if month is not None:  # the loop's next step: what `make ui` then does by itself
        landing = (
            "land the next month: with `make ui` running, its sensors refresh it, judge drift and live quality, and "
            "retrain by themselves"
        )
        steps.insert(1, (f"{_this_command()} replay --month {month}", landing))
    lines += ["", "Next:", *command_table(steps)]
    return "\n".join(lines)


def command_table(rows: list[tuple[str, str]], width: int = 116, widest_command: int = 28) -> list[str]:
    """Commands and what they do, the descriptions in a column of their own wrapped to ``width``; a command longer
    than ``widest_command`` (an absolute path to ``mlops``) gets its description on the lines below it."""
    column = 2 + max((len(command) for command, _ in rows if len(command) <= widest_command), default=0) + 2
    lines = []
    for command, description in rows:
        wrapped = textwrap.wrap(description, width - column)
        if 2 + len(command) + 2 > column:
            lines.append(f"  {command}")
        else:
            lines.append(f"  {command:<{column - 2}}{wrapped.pop(0)}")
        lines += [" " * column + line for line in wrapped]
    return lines


def _this_command() -> str:
    """How to call ``mlops`` again: the path it was run by (``.venv/bin/mlops`` from ``make``, which is not on the
    PATH until the venv is activated), or plain ``mlops`` when it was found on the PATH."""
    invoked = Path(sys.argv[0])
    on_path = shutil.which("mlops")
    if invoked.name != "mlops" or (on_path is not None and Path(on_path).resolve() == invoked.resolve()):
        return "mlops"
    return _shown(invoked.absolute())


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings()
    models = (_model(args),) if args.model else CATALOG.models
    status = store_status(CATALOG, models, settings)  # a warehouse a run is writing: said in it, the rest shown
    print(json.dumps(json_safe(status), indent=2, default=str, allow_nan=False) if args.json else format_status(status))
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    """Rejected rows found again: counts by table, month, stage and rule, or one table's rows with their reasons."""
    from mlops_assets.core.quarantine import (
        QuarantineFilter,
        format_counts,
        format_rows,
        quarantine_counts,
        quarantined_rows,
    )

    settings = load_settings()
    only = QuarantineFilter(month=args.month, rule=args.rule, stage=args.stage, newest=args.newest)
    if not settings.warehouse_path.exists():
        if args.json:
            print(json.dumps([] if args.table is None else {"table": args.table, "total": 0, "rows": []}))
        else:
            print(
                f"no quarantined row: nothing was ingested in {settings.data_dir} yet (no "
                f"{settings.warehouse_path.name}); land data and run the pipeline (`make pipeline`), or set "
                "MLOPS_DATA_DIR to the data directory"
            )
        return 0
    try:
        with duckdb.connect(str(settings.warehouse_path), read_only=True) as conn:
            if args.table is None:
                counts = quarantine_counts(conn, [t.name for t in CATALOG.tables], only)
            else:
                total, rows = quarantined_rows(conn, args.table, only, limit=args.limit or None)
    except duckdb.IOException as error:
        print(
            f"error: cannot read {settings.warehouse_path} ({error}); a run is writing it, try again when it ends",
            file=sys.stderr,
        )
        return 1
    if args.table is None:
        if args.json:
            print(json.dumps(counts, indent=2))
        elif counts:
            print(format_counts(counts))
            print("\n`mlops quarantine --table T` lists a table's rows with their reasons (--month, --rule narrow it)")
        else:
            print("no quarantined row" + ("" if only == QuarantineFilter() else " matches"))
        return 0
    if args.json:
        print(json.dumps({"table": args.table, "total": total, "rows": json_safe(rows)}, indent=2, default=str))
    elif total:
        print(format_rows(args.table, total, rows))
    else:
        print(f"no quarantined row of {args.table}" + ("" if only == QuarantineFilter() else " matches"))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    model = _model(args)
    print(f"{model.name}:\n" + format_runs(_registry(load_settings(), model), args.last))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from mlops_assets.core.features import feature_set_version

    model = _model(args)
    registry = _registry(load_settings(), model)
    try:
        shadow = registry.alias(SHADOW)
        # never to a version trained on other features than today's: the service would feed it features it never learnt
        version = rollback(registry, reason=args.reason, to=args.to, feature_set=feature_set_version(model.features))
    except (ValueError, LookupError, RegistryIntegrityError) as error:
        print(f"error: {model.name}: {error}", file=sys.stderr)
        return 1
    print(f"{model.name}: champion is now {version} (logged as rolled_back: {args.reason})")
    _say_the_shadow_ended(model.name, shadow, version)
    return 0


def _say_the_shadow_ended(model: str, shadow: str | None, champion: str) -> None:
    """The registry clears the shadow that became the champion (logged): said where the move was asked for."""
    if shadow == champion:
        print(
            f"note: {champion} was {model}'s shadow: no shadow now (logged as shadow_cleared; "
            f"`mlops shadow --model {model} --to V` sets another)",
            file=sys.stderr,
        )


def cmd_promote(args: argparse.Namespace) -> int:
    """Make a version the champion by hand (a trial, an override), the gates bypassed and said."""
    from mlops_assets.core.features import feature_set_version
    from mlops_assets.core.registry import gate_verdict, promote_by_hand

    model = _model(args)
    registry = _registry(load_settings(), model)
    verdict = gate_verdict(registry, args.to)  # read first: a damaged event log refuses before anything moves
    try:
        shadow = registry.alias(SHADOW)
        replaced = promote_by_hand(registry, args.to, args.reason, feature_set=feature_set_version(model.features))
    except (ValueError, LookupError, RegistryIntegrityError) as error:
        print(f"error: {model.name}: {error}", file=sys.stderr)
        return 1
    _say_the_shadow_ended(model.name, shadow, args.to)
    if verdict is None:
        print(f"note: the promotion gates never judged {args.to}", file=sys.stderr)
    elif verdict[0] == "rejected":
        print(f"note: the promotion gates rejected {args.to}: {verdict[1]}", file=sys.stderr)
    print(
        f"{model.name}: champion is now {args.to} (logged as promoted_by_hand: {args.reason}); "
        + (f"`mlops rollback --model {model.name}` returns to {replaced}" if replaced else "there was none before")
    )
    return 0


def cmd_shadow(args: argparse.Namespace) -> int:
    """Set (or clear) the version that scores every request and month beside the champion, never answering."""
    from mlops_assets.core.registry import set_shadow

    model = _model(args)
    registry = _registry(load_settings(), model)
    try:
        set_shadow(registry, None if args.off else args.to, args.reason)
    except (ValueError, LookupError, RegistryIntegrityError) as error:
        print(f"error: {model.name}: {error}", file=sys.stderr)
        return 1
    now = registry.alias(SHADOW)
    print(f"{model.name}: " + (f"shadow is now {now}" if now else "no shadow") + " (logged; the service reloads it)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """Re-execute each failed run from its failure, one after the other in this process (a crash that killed several
    runs is resumed with one command, paying Dagster's start once). Exit 1 when any could not be resumed or failed."""
    import dagster as dg  # only this command needs Dagster itself

    from mlops_assets.definitions import resume_run

    settings = load_settings()
    # a mistyped data directory: no run ever started there, nothing to resume (on PostgreSQL the runs live in the
    # database, and a host that never ran one has no home folder yet)
    if not settings.dagster_home.is_dir() and not os.environ.get(DAGSTER_POSTGRES_URL_ENV):
        print(
            f"error: no Dagster instance at {settings.dagster_home}, so no run to resume there: point "
            "$MLOPS_DATA_DIR (or $DAGSTER_HOME) at the data directory the runs used",
            file=sys.stderr,
        )
        return 1
    _instance_home(settings)  # the instance the pipeline commands use
    model = _model(args).name if args.model else None
    all_succeeded = True
    with dg.DagsterInstance.get() as instance:
        _recover_dead_runs(instance)  # a killed run (and the runs to resume, if they were) is marked failed first
        if not args.run_id:
            return _list_failed_runs(instance, model, args.json)
        if args.json:  # said before anything runs: a resume prints its outcome as text
            print("error: --json goes with the list (`mlops resume --json`), not with run ids", file=sys.stderr)
            return 2
        for run_id in args.run_id:
            try:
                result = resume_run(run_id, instance, model=model)
            except ValueError as error:
                print(f"error: {error}", file=sys.stderr)
                all_succeeded = False
                continue
            steps = sorted({e.step_key for e in result.all_events if e.is_step_success and e.step_key})
            outcome = "SUCCESS" if result.success else "FAILURE"
            resumed = result.dagster_run.parent_run_id or run_id  # the whole id, when given its first characters
            print(f"run {result.run_id} (resuming {resumed}): {outcome}; re-ran: {', '.join(steps) or 'nothing'}")
            all_succeeded = all_succeeded and result.success
    return 0 if all_succeeded else 1


def _list_failed_runs(instance: Any, model: str | None, as_json: bool) -> int:
    """`mlops resume` without run ids: the failed runs left to resume, with where and why each failed."""
    from mlops_assets.definitions import failed_runs

    found = failed_runs(instance, model)
    if as_json:
        print(json.dumps({"to_resume": [f.as_json() for f in found.to_resume], "settled": found.settled}, indent=2))
        return 0
    settled = (
        f"{found.settled} other failed run(s) need no resume: a retry or resume of theirs, or a later run that did "
        "their work (the same job or training_pipeline, over their months or more), succeeded."
        if found.settled
        else ""
    )
    if not found.to_resume:
        print(f"No failed run left to resume among the newest {found.searched:,} runs. {settled}".rstrip())
        return 0
    print("Failed runs left to resume, newest first:")
    now = time.time()
    for failed in found.to_resume:
        when = ""
        if failed.failed_at is not None:
            at = time.strftime("%Y-%m-%d %H:%M", time.localtime(failed.failed_at))
            when = f"failed {at} ({_age(now - failed.failed_at)} ago)"
        print(f"  {failed.run_id[:8]}  {failed.job_name:<28} {failed.months or '':<17} {when}")
        where = f"at {', '.join(failed.steps)}: " if failed.steps else ""
        print(f"            {where}{_shorten(failed.cause or 'no reason recorded', 160)}")
        if failed.retry_due:
            print("            the daemon retries it (Dagster's run retries): wait for its retry run before resuming")
    print("Resume one from its failure: mlops resume RUN_ID (several: mlops resume RUN_ID RUN_ID ...; ids as above).")
    if settled:
        print(settled)
    return 0


def _age(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h``, ``2 d``: how long ago, for people."""
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def _shorten(text: str, width: int) -> str:
    """One line of at most ``width`` characters (an ellipsis where it was cut)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def host_problem(host: str) -> str | None:
    """Why a server cannot listen on ``host`` (None: it can): a name this machine cannot resolve, or an address that
    is not one of its own. Said before anything starts (uvicorn failed only after every model had loaded)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
            0
        ]
    except (socket.gaierror, UnicodeError) as error:
        return f"--host {host} is neither an address nor a name this machine resolves ({error})"
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)  # port 0: any free port, only the address is tried
        except OSError as error:
            return (
                f"--host {host} is not an address of this machine ({error.strerror}): give one of its own, "
                "e.g. 127.0.0.1 (this machine only, the default) or 0.0.0.0 (every interface)"
            )
    return None


def port_taken(host: str, port: int) -> bool:
    """Whether another process listens on ``host:port`` (a bind there fails as in use)."""
    if port == 0:
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def cmd_ui(args: argparse.Namespace) -> int:
    """The Dagster UI and daemon (`dagster dev`) on the platform's instance, stopped whole by one SIGTERM or Ctrl-C."""
    from mlops_assets.ui import dagster_dev_command, supervise

    workspace = Path(args.workspace).resolve()
    if not workspace.is_file():  # said before anything starts (Dagster's own error came after "Dagster UI on ...")
        print(
            f"error: no workspace file {workspace}: give the repo's workspace.yaml (the default, run from the repo)",
            file=sys.stderr,
        )
        return 2
    if problem := host_problem(args.host or "127.0.0.1"):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if port_taken(args.host or "127.0.0.1", args.port):
        # dagster dev would start its daemon anyway, a second one on the instance, before its webserver fails
        print(
            f"error: port {args.port} is in use (another `make ui`?): stop that one, or pick another port "
            "(`make ui UI_PORT=3001`, `mlops ui --port 3001`)",
            file=sys.stderr,
        )
        return 1
    settings = load_settings()
    os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(settings.dagster_home))  # the repo's instance config
    _recover_dead_runs()  # runs killed before the daemon starts would hold the run queue and the duckdb pool
    where = f"http://{args.host or '127.0.0.1'}:{args.port}"
    print(f"Dagster UI on {where} (instance {os.environ['DAGSTER_HOME']}); stop it with Ctrl-C or SIGTERM")
    # Run from the instance's folder: from the repo, Dagster warns that the dagster.yaml there is not the instance's
    # (it is its template). Click's note that `dagster dev` is superseded by `dg dev` (which needs a `dg` project,
    # not used here) is filtered as `make pipeline` does.
    warnings = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore::FutureWarning:click.core"]))
    # the data directory absolute: the processes run elsewhere than this one
    env = {**os.environ, "PYTHONWARNINGS": warnings, "MLOPS_DATA_DIR": str(settings.data_dir)}
    return supervise(
        dagster_dev_command(workspace, args.port, args.host), cwd=Path(os.environ["DAGSTER_HOME"]), env=env
    )


def cmd_home(args: argparse.Namespace) -> int:
    """Create $DAGSTER_HOME under the data directory with the repo's dagster.yaml, and print its absolute path."""
    print(prepare_dagster_home(load_settings().dagster_home))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from dagster._core.errors import DagsterExecutionInterruptedError  # Dagster: imported only here

    from mlops_assets.simulation import SimulationError, check_data_dir, simulate, simulated_months
    from mlops_assets.ticks import STOP_SIGNALS, RunInterrupted, StopSignals

    model = _model(args)
    start, through = args.start or model.feed.first_month, args.through or model.feed.last_month
    if start is None or through is None:
        print(f"error: feed {model.feed.name} declares no replay months: give --from and --through", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir).resolve() if args.data_dir else load_settings().data_dir / "simulation"
    try:
        simulated_months(model, start, through, args.every)
        check_data_dir(data_dir)
    except SimulationError as error:  # said before the data directory is cleared
        print(f"error: {error}", file=sys.stderr)
        return 2
    span = f"{start}..{through}"
    print(
        f"Simulating {model.name} over {span} in {data_dir} (cleared first): sensors and automation decide, tick by tick."
    )
    # SIGTERM stops it as Ctrl-C does (a KeyboardInterrupt here, or the run in progress interrupted); SIGINT too when
    # it was ignored (started in the background by a script): Dagster maps SIGTERM to SIGINT's handler after each run
    handlers = {stop_signal: signal.signal(stop_signal, signal.default_int_handler) for stop_signal in STOP_SIGNALS}
    try:
        with StopSignals() as stop_signals:
            simulate(data_dir, model, start, through, every=args.every, stop_requested=stop_signals.received)
    except SimulationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    # Ctrl-C, SIGTERM: a person or a supervisor asked it to stop (Dagster raises its own error for a signal that
    # comes while it sets up a sensor's resources)
    except (KeyboardInterrupt, DagsterExecutionInterruptedError) as stop:
        during = ""
        if isinstance(stop, RunInterrupted):  # the signal came during a run: it ended interrupted, or just ended
            ended = "ended" if stop.run.success else "ended interrupted (marked failed)"
            during = f": run {stop.run.run_id[:8]} {ended}, and no run starts after it"
        print(
            f"\nstopped{during}. {data_dir} holds the months done so far (browse them with "
            f"`DAGSTER_HOME={data_dir / 'dagster_home'} MLOPS_DATA_DIR={data_dir} dagster dev -w workspace.yaml`); "
            "`mlops simulate` starts the year over (it clears the folder first)",
            file=sys.stderr,
        )
        return 130
    finally:  # the caller's own handlers back (a test's process, a program calling main)
        for stop_signal, handler in handlers.items():
            if handler is not None:  # None: set outside Python, nothing to give back
                signal.signal(stop_signal, handler)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the prediction service until SIGTERM / Ctrl-C (the prediction log is flushed on the way out)."""
    from mlops_assets.serving import load_serve_config, serve  # FastAPI and uvicorn: only this command needs them

    default = _model(args)
    try:
        config = load_serve_config(host=args.host, port=args.port, ab_share=args.ab_share)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if problem := host_problem(config.host):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if config.port and port_taken(config.host, config.port):
        print(
            f"error: port {config.port} is in use (another `make serve`?): stop that one, or pick another port "
            f"(`make serve PORT={config.port + 1}`, `mlops serve --port {config.port + 1}`)",
            file=sys.stderr,
        )
        return 1
    settings = load_settings()
    names = ", ".join(m.name for m in CATALOG.models)
    routes = f"POST /models/<model>/predict, POST /predict: {default.name}; A/B share {config.ab_share:g}"
    where = f"http://{config.host}:{config.port}" if config.port else f"a free port of {config.host} (uvicorn names it)"
    print(f"Serving {names} from {settings.data_dir} on {where} ({routes})")
    try:
        serve(settings, CATALOG, config, default_model=default.name)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: said in a line, not a traceback
        print("Stopped (Ctrl-C): requests in flight were answered, the prediction log flushed.", file=sys.stderr)
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlops", description="mlops_assets: a self-maintaining ML platform on Dagster."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    model_names = [m.name for m in CATALOG.models]

    def model_option(command: argparse.ArgumentParser, what: str) -> None:
        command.add_argument("--model", choices=model_names, help=f"{what}; registered: {', '.join(model_names)}")

    replay = commands.add_parser(
        "replay", help="land a feed's months into $MLOPS_DATA_DIR/landing and add them as partitions"
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--through", type=_month, help="land every month from --from (default: the feed's first) through this one"
    )
    which.add_argument("--month", type=_month, help="land exactly this month")
    replay.add_argument("--from", dest="start", type=_month, help="first month with --through")
    feeds = [f.name for f in REPLAYABLE]
    replay.add_argument(
        "--feed", choices=feeds, default=feeds[0] if feeds else None, help="the feed (default: %(default)s)"
    )
    replay.add_argument("--every", type=_positive, default=1, help="keep every n-th row (a small real feed for tests)")
    replay.set_defaults(handler=cmd_replay)

    land = commands.add_parser(
        "land", help="land a parquet file of one's own as a table's batch, with its checksum file; add its month"
    )
    land.add_argument("file", type=Path, help="the parquet file to land")
    land.add_argument("--table", required=True, help="the table it is a batch of (e.g. flights, weather, planes)")
    land.add_argument("--month", type=_month, help="the month its rows are from (monthly tables)")
    land.add_argument(
        "--unchecked",
        action="store_true",
        help="land it even when it is not readable parquet or its columns differ from the table's contract (the "
        "pipeline then rejects and quarantines it, as a delivery from outside)",
    )
    land.set_defaults(handler=cmd_land)

    months = commands.add_parser(
        "months",
        help="the landed months, up to the first that a table has not landed for (named on stderr); --tags: run "
        "tags covering them (JSON)",
    )
    months.add_argument(
        "--tags", action="store_true", help="print the partition-range run tags for `dagster job execute --tags`"
    )
    months.set_defaults(handler=cmd_months)

    models = commands.add_parser("models", help="every registered model: feed, champion and its evaluation metrics")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(handler=cmd_models)

    status = commands.add_parser("status", help="what the platform holds: months, rows, quarantine, features, models")
    model_option(status, "only this model (default: every model)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)

    table_names = [t.name for t in CATALOG.tables]
    held = commands.add_parser(
        "quarantine",
        help="rejected rows: counted by table, month, stage and rule, or (with --table) row by row with the reason",
    )
    held.add_argument("--table", choices=table_names, help="list this table's quarantined rows, not the counts")
    held.add_argument("--month", type=_month, help="only this month (YYYY-MM)")
    held.add_argument("--rule", help="only this rule, e.g. in_range, duplicate_row, label_implausible")
    held.add_argument("--stage", choices=["raw", "validated"], help="only rows set aside at this stage")
    held.add_argument(
        "--newest",
        action="store_true",
        help="only rows of each month's newest landed file (not of files replaced since)",
    )
    held.add_argument("--limit", type=_count, default=20, help="rows listed with --table (default 20; 0: all of them)")
    held.add_argument("--json", action="store_true", help="machine-readable output (every row's values in full)")
    held.set_defaults(handler=cmd_quarantine)

    runs = commands.add_parser("runs", help="a model's training runs side by side: params, data hash, metrics")
    model_option(runs, f"the model (default: {CATALOG.default.name})")
    runs.add_argument("--last", type=_positive, default=10, help="how many of the newest versions (positive)")
    runs.set_defaults(handler=cmd_runs)

    back = commands.add_parser(
        "rollback", help="move a model's champion back (default: the previous one no rollback took out)"
    )
    model_option(back, f"the model (default: {CATALOG.default.name})")
    back.add_argument("--to", help="the version to serve, e.g. v0003")
    back.add_argument("--reason", default="rolled back by hand", help="recorded in the event log")
    back.set_defaults(handler=cmd_rollback)

    forward = commands.add_parser(
        "promote", help="make a version the champion by hand, the promotion gates bypassed (logged, undone by rollback)"
    )
    model_option(forward, f"the model (default: {CATALOG.default.name})")
    forward.add_argument("--to", required=True, help="the version to serve, e.g. v0004")
    forward.add_argument("--reason", default="promoted by hand", help="recorded in the event log")
    forward.set_defaults(handler=cmd_promote)

    shadow = commands.add_parser(
        "shadow", help="set the version that scores every request and month beside the champion (never answers)"
    )
    model_option(shadow, f"the model (default: {CATALOG.default.name})")
    which_shadow = shadow.add_mutually_exclusive_group(required=True)
    which_shadow.add_argument("--to", help="the version, e.g. v0001")
    which_shadow.add_argument("--off", action="store_true", help="no shadow")
    shadow.add_argument("--reason", default="set by hand", help="recorded in the event log")
    shadow.set_defaults(handler=cmd_shadow)

    resume = commands.add_parser("resume", help="re-execute failed runs from their failure, one after the other")
    model_option(resume, "refuse a run unless it is this model's (default: the run's own model)")
    resume.add_argument(
        "run_id",
        nargs="*",
        help="a failed run's id, or its first 8 characters (none: list the failed runs left to resume); several: in "
        "turn",
    )
    resume.add_argument("--json", action="store_true", help="with no run id: the list, machine-readable")
    resume.set_defaults(handler=cmd_resume)

    sim = commands.add_parser(
        "simulate", help="replay a year from an empty data dir; sensors and automation keep the model alive"
    )
    model_option(sim, f"the model simulated (default: {CATALOG.default.name})")
    sim.add_argument("--from", dest="start", type=_month, help="first month (default: the feed's first, 2013-01)")
    sim.add_argument("--through", type=_month, help="last month (default: the feed's last, 2013-12)")
    sim.add_argument("--every", type=_positive, default=1, help="keep every n-th row (e.g. 20 for a quick run)")
    sim.add_argument(
        "--data-dir", help="where the simulation lives (default $MLOPS_DATA_DIR/simulation; cleared first)"
    )
    sim.set_defaults(handler=cmd_simulate)

    ui = commands.add_parser(
        "ui", help="the Dagster UI and daemon (dagster dev); one SIGTERM or Ctrl-C stops all of it"
    )
    ui.add_argument("--port", type=_port, default=3000, help="the webserver's port (default 3000)")
    ui.add_argument("--host", help="interface to bind (default 127.0.0.1: loopback only)")
    ui.add_argument("--workspace", default="workspace.yaml", help="the workspace file (default workspace.yaml)")
    ui.set_defaults(handler=cmd_ui)

    doctor = commands.add_parser("doctor", help="check the registries (checksums, aliases, event log); --repair them")
    model_option(doctor, "only this model (default: every model)")
    doctor.add_argument("--repair", action="store_true", help="set damaged event lines aside, rebuild the aliases")
    doctor.set_defaults(handler=cmd_doctor)

    home = commands.add_parser("home", help="prepare $DAGSTER_HOME (with the repo's dagster.yaml) and print its path")
    home.set_defaults(handler=cmd_home)

    srv = commands.add_parser(
        "serve",
        help="the prediction service for every model: POST /models/<model>/predict, POST /predict, GET /health, GET /models",
    )
    model_option(srv, f"the model `POST /predict` answers (default: {CATALOG.default.name})")
    srv.add_argument("--host", help="interface to bind (default 127.0.0.1: loopback only)")
    srv.add_argument("--port", type=int, help="port (default 8000)")
    srv.add_argument(
        "--ab-share",
        type=float,
        help="share of flights answered by the challenger alias (0..1; default $MLOPS_AB_SHARE or 0)",
    )
    srv.set_defaults(handler=cmd_serve)
    return parser


def _whole_number(value: str, least: int, what: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}") from None
    if number < least:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return number


def _port(value: str) -> int:
    number = _whole_number(value, 1, "a port number from 1 to 65535")
    if number > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {value}")
    return number


def _count(value: str) -> int:
    return _whole_number(value, 0, "a number (0 or more)")


def _positive(value: str) -> int:
    return _whole_number(value, 1, "a positive number")


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check every model's registry (versions against their checksums, aliases, event log); --repair sets damaged
    event lines aside and rebuilds the aliases from the event log."""
    settings = load_settings()
    models = (_model(args),) if args.model else CATALOG.models
    sound = True
    for model in models:
        registry = _registry(settings, model)
        if not registry.root.exists():  # never trained here: nothing to check, and a repair would make its folder
            print(f"{model.name}: no registry yet in {settings.data_dir} (nothing trained): nothing to check")
            continue
        if args.repair:
            for done in repair(registry) or ["nothing to repair"]:
                print(f"{model.name}: {done}")
        for finding in examine(registry):
            sound = sound and finding.ok
            print(f"{model.name}: {'ok  ' if finding.ok else 'FAIL'} {finding.what}: {finding.detail}")
    if not sound:
        print(
            "Some checks failed: `mlops doctor --repair` fixes aliases and the event log; a version failing its "
            "checksum is never loaded: a damaged champion is rolled back (`mlops rollback --model M`, which passes "
            "over damaged versions) before a retraining can be judged against it."
        )
    return 0 if sound else 1


def refuse_unknown_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Exit naming an option the command does not know, with the nearest it does: argparse itself would first say
    that a required option is missing (``mlops replay --thru 2013-03``: "one of --through --month is required")."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    name = next((token for token in argv if not token.startswith("-")), None)
    command = commands.choices.get(name) if name else None
    if command is None:
        return
    known = [option for action in command._actions for option in action.option_strings]
    suggestable = [option for option in known if option not in ("-h", "--help")]  # never what was meant
    for token in argv[argv.index(name) + 1 :]:
        if token == "--":
            return
        option = token.split("=", 1)[0]
        if option.startswith("--") and option not in known and not any(k.startswith(option) for k in known):
            nearest = difflib.get_close_matches(option, suggestable, n=1)
            command.error(f"unknown option {option}" + (f" (did you mean {nearest[0]}?)" if nearest else ""))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    refuse_unknown_options(parser, sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # a reader that is gone shows here, handled below, not as an error at the exit's flush
        return code
    except RegistryDamaged as error:  # one line naming the file and the repair, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
    except SettingsError as error:  # an environment variable out of range: which, and what it accepts
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped early (`mlops status --json | head`): end quietly, as `cat` does
        # the output still buffered would fail again at exit: it goes nowhere instead (Python's documented recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
