"""What the platform holds right now, for people (``mlops status``) and machines (``mlops status --json``)."""

from __future__ import annotations

import math
from typing import Any

import duckdb

from mlops_assets.core.catalog import Catalog
from mlops_assets.core.ingest import latest_verdicts
from mlops_assets.core.landing import find_landed, landed_months, reference_files, unlanded_references
from mlops_assets.core.records import EvaluationResult, RecordError
from mlops_assets.core.registry import CHAMPION, Registry, RegistryIntegrityError, UnknownVersionError
from mlops_assets.core.settings import Settings
from mlops_assets.core.specs import ModelSpec
from mlops_assets.core.store import qualified, table_exists


def _counts_by_month(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> dict[str, int]:
    if not table_exists(conn, schema, table):
        return {}
    rows = conn.execute(
        f"SELECT coalesce(_month, 'reference'), count(*) FROM {qualified(schema, table)} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return {str(month): int(n) for month, n in rows}


def _quarantined_by_version(
    conn: duckdb.DuckDBPyConnection, table: str, newest: list[dict[str, object]]
) -> tuple[dict[str, int], dict[str, int]]:
    """Quarantined rows per month: of its newest landed version (by sha256), and of its earlier versions."""
    if not table_exists(conn, "quarantine", table):
        return {}, {}
    wanted = {v["month"] or "reference": v["sha256"] for v in newest}
    current: dict[str, int] = {}
    earlier: dict[str, int] = {}
    for month, sha, n in conn.execute(
        f"SELECT coalesce(_month, 'reference'), _sha256, count(*) FROM {qualified('quarantine', table)} GROUP BY 1, 2"
    ).fetchall():
        counts = current if wanted.get(month) == sha else earlier
        counts[month] = counts.get(month, 0) + int(n)
    return dict(sorted(current.items())), dict(sorted(earlier.items()))


def store_status(catalog: Catalog, models: tuple[ModelSpec, ...], settings: Settings) -> dict[str, Any]:
    """Landed months; per feed table the validated and quarantined rows by month and the rejected batches; per feature
    table its rows by month; and per model (of ``models``) its registry and monitored months."""
    status: dict[str, Any] = {
        "landed_months": landed_months(settings.landing_dir, [t.name for f in catalog.feeds for t in f.monthly_tables]),
        # reference tables with no landed file: every month's validation and features need them
        "reference_not_landed": unlanded_references(
            settings.landing_dir, [t.name for f in catalog.feeds for t in f.reference_tables]
        ),
        "tables": {},
        "features": {},
        "models": {},
    }
    for model in models:
        status["models"][model.name] = {
            "feed": model.feed.name,
            "features": model.features.name,
            "registry": registry_status(Registry(settings.model(model.name).registry_dir)),
            "monitoring": [],
        }
    if not settings.warehouse_path.exists():
        return status
    try:
        conn = duckdb.connect(str(settings.warehouse_path), read_only=True)
    except duckdb.IOException as error:  # a run writes it (DuckDB: one process at a time): the rest still shows
        status["warehouse_busy"] = f"{settings.warehouse_path} is being written by a run ({error})"
        return status
    with conn:
        for table in catalog.tables:
            newest = latest_verdicts(conn, table.name, ("raw", "validated"))
            validated = _counts_by_month(conn, "validated", table.name)
            rejected = [
                {
                    "month": v["month"],
                    "stage": v["stage"],
                    "rule": v["rule"],
                    "column": v["column_name"],
                    "message": v["message"],
                    # what serves meanwhile: the month's last accepted version, if one was ever accepted
                    "serving": "the last accepted version"
                    if (v["month"] or "reference") in validated
                    else "nothing of this month",
                    # a corrected file landed since the rejection: its run has not judged it yet
                    "newer_version_waiting": _landed_since(settings, table.name, v),
                }
                for v in newest
                if v["accepted"] is False
            ]
            current, earlier = _quarantined_by_version(conn, table.name, newest)
            status["tables"][table.name] = {
                "validated_rows": validated,
                # the newest landed version of each month; earlier versions' rows stay in quarantine, counted apart
                "quarantined_rows": current,
                "quarantined_rows_earlier_versions": earlier,
                "rejected_batches": rejected,
            }
        for spec in catalog.feature_tables:
            status["features"][spec.name] = _counts_by_month(conn, "features", spec.name)
        for model in models:
            status["models"][model.name]["monitoring"] = monitoring_status(conn, model.name)
    return status


def monitoring_status(conn: duckdb.DuckDBPyConnection, model: str) -> list[dict[str, Any]]:
    """Per monitored month of ``model``: the drift verdict against the champion that scored it, and live AUC per
    variant (from the model's own ``drift_report`` and ``live_performance`` tables)."""
    months: dict[str, dict[str, Any]] = {}
    if table_exists(conn, model, "drift_report"):
        rows = conn.execute(
            f"""SELECT _month, any_value(model_version),
                      count(*) FILTER (kind IN ('numeric', 'categorical') AND drifted),
                      count(*) FILTER (kind IN ('numeric', 'categorical')),
                      bool_or(kind = 'score' AND drifted)
               FROM {qualified(model, "drift_report")} GROUP BY 1 ORDER BY 1"""
        ).fetchall()
        for month, version, drifted, features, scores in rows:
            months[month] = {
                "month": month,
                "scored_by": version,
                "features_drifted": int(drifted),
                "features": int(features),
                "scores_drifted": bool(scores),
            }
    if table_exists(conn, model, "live_performance"):
        rows = conn.execute(
            f"SELECT _month, source, variant, model_version, roc_auc FROM {qualified(model, 'live_performance')} ORDER BY 1, 2, 3"
        ).fetchall()
        for month, source, variant, version, auc in rows:
            entry = months.setdefault(month, {"month": month})
            # a month with one class has no AUC: absent, not a number
            known = auc is not None and not math.isnan(auc)
            entry.setdefault("live_roc_auc", {})[f"{source} {variant} {version}"] = (
                round(float(auc), 4) if known else None
            )
    return list(months.values())


def format_status(status: dict[str, Any]) -> str:
    """A short human summary of :func:`store_status`."""
    lines = [f"Landed months: {', '.join(status['landed_months']) or 'none (run `mlops replay --through 2013-03`)'}"]
    if status["landed_months"] and status.get("reference_not_landed"):
        missing = status["reference_not_landed"]
        files = reference_files(missing)
        lines.append(
            f"Reference tables not landed: {', '.join(missing)} (no month can be built without them: land {files} "
            f"or run `mlops replay --through {status['landed_months'][-1]}`)"
        )
    if status.get("warehouse_busy"):
        lines.append("Warehouse: a run is writing it; rows, quarantine, features and monitoring show once it ends")
    elif not status["tables"]:
        lines.append("Warehouse: not built yet (run `make pipeline`)")
    else:
        lines.append(
            f"{'table':<16}{'validated rows':>16}{'quarantined':>13}  rejected batches (newest version landed)"
        )
    for name, info in status["tables"].items():
        rejected = "; ".join(_rejected(r) for r in info["rejected_batches"])
        valid, quarantined = sum(info["validated_rows"].values()), sum(info["quarantined_rows"].values())
        earlier = sum(info["quarantined_rows_earlier_versions"].values())
        lines.append(f"{name:<16}{valid:>16,}{quarantined:>13,}  {rejected or '-'}")
        if earlier:
            lines.append(f"{'':<16}{'':>16}{'+' + f'{earlier:,}':>13}  of earlier versions of a month (kept)")
    for name, by_month in status["features"].items():
        months = ", ".join(f"{m}: {n:,}" for m, n in by_month.items())
        lines.append(f"features.{name}: {sum(by_month.values()):,} rows ({months or 'none'})")
    for name, model in status["models"].items():
        lines += [
            "",
            f"== {name} (feed {model['feed']}, features.{model['features']})",
            format_registry(model["registry"]),
        ]
        if model["monitoring"]:
            lines.append("Monitoring (month: drift against the champion that scored it; live AUC):")
            lines += [f"  {_monitored_month(entry)}" for entry in model["monitoring"]]
    return "\n".join(lines)


def _landed_since(settings: Settings, table: str, verdict: dict[str, Any]) -> str | None:
    """The sha256 of the file landed for the verdict's month when it is not the one the verdict judged, else None."""
    landed = find_landed(settings.landing_dir, table, verdict["month"])
    if landed is None or not verdict.get("sha256") or landed.sha256 == verdict["sha256"]:
        return None
    return landed.sha256


def _rejected(batch: dict[str, Any]) -> str:
    on = f" on {batch['column']}" if batch["column"] else ""
    waiting = batch.get("newer_version_waiting")
    since = f"; a newer file (sha256 {waiting[:12]}) landed since, waiting for its run" if waiting else ""
    return f"{batch['month'] or 'reference'} ({batch['stage']}: {batch['rule']}{on}; serving {batch['serving']}{since})"


def _monitored_month(entry: dict[str, Any]) -> str:
    drift = "-"
    if "features" in entry:
        drift = f"{entry['features_drifted']}/{entry['features']} features drifted"
        drift += ", scores drifted" if entry["scores_drifted"] else ""
    aucs = entry.get("live_roc_auc", {}).items()
    live = ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in aucs) or "-"
    return f"{entry['month']}: {drift}; {live}"


def _checksum_ok(registry: Registry, version: str) -> bool:
    try:
        registry.model_text(version)
        return True
    except (RegistryIntegrityError, OSError, ValueError):
        return False


def registry_status(registry: Registry, events: int = 8) -> dict[str, Any]:
    """Versions with their key metrics and whether each still matches its checksum, the aliases, the latest events."""
    versions = []
    for version in registry.versions():
        try:
            meta = registry.get(version).metadata
        except RegistryIntegrityError as error:  # a damaged metadata.json: listed with why, never a traceback
            versions.append({"version": version, "checksum_ok": False, "damaged": str(error)})
            continue
        valid = meta.get("metrics", {}).get("valid", {})
        versions.append(
            {
                "version": version,
                "registered_at": meta.get("registered_at"),
                "valid_roc_auc": valid.get("roc_auc"),
                "valid_log_loss": valid.get("log_loss"),
                "training_set_hash": meta.get("training_set_hash"),
                "feature_set_version": meta.get("feature_set_version"),
                "test_month": meta.get("data", {}).get("test_month"),
                "checksum_ok": _checksum_ok(registry, version),
            }
        )
    aliases = registry.aliases()
    known = {v["version"] for v in versions}
    missing = {alias: version for alias, version in aliases.items() if version is not None and version not in known}
    return {
        "model": registry.root.name,
        "versions": versions,
        "aliases": aliases,
        "missing": missing,
        "events": registry.events(limit=events),
    }


def model_overview(model: ModelSpec, registry: Registry) -> dict[str, Any]:
    """For ``mlops models``: the model, its feed, its champion and the metrics the champion had in its evaluation
    (read from the registry; absent when it has no champion or was never evaluated)."""
    champion = registry.alias(CHAMPION)
    verified: bool | None = None
    problem: str | None = None
    if champion:
        try:
            registry.model_text(champion)
            verified = True
        except UnknownVersionError:
            verified, problem = False, "missing"
        except (RegistryIntegrityError, OSError):
            verified, problem = False, "checksum FAILS"
    evaluation = None
    if champion and problem != "missing":
        try:
            evaluation = registry.evaluation(champion)
        except (RecordError, OSError, UnicodeDecodeError):  # damaged by hand or by a disk: named, never a traceback
            problem = ", ".join(filter(None, [problem, "evaluation record damaged: `mlops doctor`"]))
    return {
        "name": model.name,
        "feed": model.feed.name,
        "predicts": model.positive,
        "label": model.features.label,
        "champion": champion,
        "champion_checksum_ok": verified,
        "champion_problem": problem,
        "versions": len(registry.versions()),
        "evaluation": _evaluation_overview(evaluation),
    }


def _evaluation_overview(evaluation: EvaluationResult | None) -> dict[str, Any] | None:
    """The test month and the metrics a version had when it was judged as the challenger."""
    if evaluation is None:
        return None
    return {"test_month": evaluation.test_month, "metrics": evaluation.metrics.get("challenger")}


def format_models(overviews: list[dict[str, Any]]) -> str:
    """One line per model: its champion and the champion's evaluation metrics."""
    champions = [
        (o["champion"] or "none") + (f" ({o['champion_problem']})" if o.get("champion_problem") else "")
        for o in overviews
    ]
    width = max(10, *(len(c) + 2 for c in champions))  # a flag never runs into the next column
    header = f"{'model':<22}{'feed':<14}{'champion':<{width}}{'test month':<12}{'ROC AUC':>9}{'PR AUC':>9}"
    lines = [header + f"{'base rate':>11}"]
    for o, champion in zip(overviews, champions, strict=True):
        metrics = (o["evaluation"] or {}).get("metrics") or {}
        cells = [f"{metrics[m]:.4f}" if metrics.get(m) is not None else "-" for m in ("roc_auc", "pr_auc", "base_rate")]
        test_month = (o["evaluation"] or {}).get("test_month") or "-"
        lines.append(
            f"{o['name']:<22}{o['feed']:<14}{champion:<{width}}{test_month:<12}{cells[0]:>9}{cells[1]:>9}{cells[2]:>11}"
        )
    return "\n".join(lines)


def _fix_for(aliases: list[str]) -> str:
    """What to do when ``aliases`` name a damaged version: a damaged champion is rolled back first (no retraining can
    be judged against it); a damaged challenger is trained again."""
    if CHAMPION in aliases:
        return "`mlops rollback` (it passes over damaged versions), then retrain if you like"
    return "retrain (`make pipeline`)"


def format_registry(status: dict[str, Any]) -> str:
    if not status["versions"]:
        return "Versions: none registered yet (`make pipeline` trains every model)"
    aliases = ", ".join(f"{name} -> {version}" for name, version in status["aliases"].items()) or "none"
    lines = [f"Versions: {len(status['versions'])}; aliases: {aliases}"]
    for version in status["versions"]:
        if version.get("damaged"):
            lines.append(f"WARNING: {version['damaged']}")
    missing = status.get("missing") or {}
    if missing:
        named = ", ".join(f"{alias} -> {version}" for alias, version in missing.items())
        lines.append(
            f"WARNING: aliases name versions that do not exist ({named}): "
            f"`mlops doctor --model {status.get('model', '<model>')} --repair` rebuilds the aliases from the event log"
        )
    # a damaged metadata file is its own warning above: these are the models whose bytes fail their checksum
    damaged = [v["version"] for v in status["versions"] if not v.get("checksum_ok", True) and not v.get("damaged")]
    broken = [v["version"] for v in status["versions"] if not v.get("checksum_ok", True)]
    if broken:
        serving = [a for a, v in status["aliases"].items() if v in broken]
        what = f"{', '.join(damaged)} fail(s) the checksum" if damaged else f"{', '.join(broken)} damaged"
        lines.append(
            f"WARNING: {what} (never loaded)"
            + (f"; named by {', '.join(serving)}: {_fix_for(serving)}" if serving else "")
        )
    lines.append("Latest events:")
    width = max((len(str(e["event"])) for e in status["events"]), default=11)  # promoted_by_hand is the longest
    for event in status["events"]:
        lines.append(
            f"  {event['time']}  {event['event']:<{width}} {event.get('version') or '-':<6} {event.get('reason', '')}"
        )
    return "\n".join(lines)


def _metadata_or_damaged(registry: Registry, version: str) -> dict[str, Any]:
    """A version's metadata; for a damaged one, a column that says so (``mlops doctor`` names the file)."""
    try:
        return registry.get(version).metadata
    except RegistryIntegrityError:
        return {"registered_at": "DAMAGED", "code_version": {"git_commit": "mlops doctor"}}


def _commit(code_version: dict[str, Any]) -> str:
    """The commit a version was trained from, ``+dirty`` when the checkout had uncommitted changes (not that code)."""
    commit = str(code_version.get("git_commit") or "-")[:10]
    return commit + ("+dirty" if code_version.get("git_dirty") else "")


def format_runs(registry: Registry, last: int = 10) -> str:
    """Training runs side by side, newest last: one column per version."""
    versions = registry.versions()[-last:]
    if not versions:
        return "No training runs yet."
    metas = [_metadata_or_damaged(registry, v) for v in versions]
    rows: list[tuple[str, list[str]]] = [
        ("registered", [str(m.get("registered_at", ""))[:16] for m in metas]),
        ("git commit", [_commit(m.get("code_version") or {}) for m in metas]),
        ("training set", [str(m.get("training_set_hash", "-"))[:10] for m in metas]),
        ("feature set", [str(m.get("feature_set_version", "-"))[:10] for m in metas]),
        ("test month", [str(m.get("data", {}).get("test_month", "-")) for m in metas]),
        ("train rows", [str(m.get("data", {}).get("train_rows", "-")) for m in metas]),
        ("trees", [str(m.get("best_iteration", "-")) for m in metas]),
    ]
    params = sorted({k for m in metas for k in m.get("params", {}) if k not in ("metric", "objective", "verbosity")})
    rows += [(k, [str(m.get("params", {}).get(k, "-")) for m in metas]) for k in params]
    rows += [
        (f"valid {metric}", [f"{m.get('metrics', {}).get('valid', {}).get(metric, float('nan')):.4f}" for m in metas])
        for metric in ("roc_auc", "log_loss", "brier")
    ]
    aliases = registry.aliases()
    rows.append(("alias", [", ".join(a for a, v in aliases.items() if v == version) or "-" for version in versions]))
    width = max(len(label) for label, _ in rows)
    cell = max(11, *(len(value) for _, values in rows for value in values))
    lines = [" " * width + "  " + "".join(f"{v:>{cell + 2}}" for v in versions)]
    lines += [f"{label:<{width}}  " + "".join(f"{value:>{cell + 2}}" for value in values) for label, values in rows]
    return "\n".join(lines)
