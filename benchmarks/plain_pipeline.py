"""The steps of ``training_pipeline`` in one plain process, without Dagster: the baseline of its overhead.

Each step calls the same ``mlops_assets.core`` functions as the job's asset (``mlops_assets/defs/*.py``), on the data
directory of ``$MLOPS_DATA_DIR``: ingest (``ingest_raw``) and validation (``validate_partitions``, one call per table)
of every table and landed month, ``write_months`` for every feature table, then for every model the training set
(``split_by_time``, stored and read back), the challenger (``train_model``, valid metrics, ``reference_profile``,
registered), the evaluation (``metrics``, ``slice_metrics``, ``evaluation_plots``, the registry's record), the promotion
decision (``decide_promotion_from``), the champion's canary and the online store (``build_export`` / ``write_export``).
Not done here: the other asset checks' queries, the evaluation's Markdown report, Dagster's event log. The job's
training defaults (Dagster configs) come from the parent in ``$MLOPS_BENCH_PLAIN`` (JSON), so this process never imports
Dagster; the models named there are the ones it runs (every model of the catalog, or one alone) with their feature
tables. The benchmark's smoke mode runs it, so a change of these functions' signatures breaks CI, not the figure.
It prints one JSON line: each model's test metrics and decision, and the wall and CPU seconds of each stage
(:class:`Stages`), which the benchmark reports as where the time goes.

    MLOPS_DATA_DIR=... MLOPS_BENCH_PLAIN='{...}' python benchmarks/plain_pipeline.py   # see training_pipeline.py
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

#: Set by ``training_pipeline.py``: per model {params, num_boost_round, early_stopping_rounds}, profile_rows,
#: canary_rows, window_months.
CONFIG_ENV = "MLOPS_BENCH_PLAIN"


def ingest_and_validate(conn: Any, settings: Any, run_id: str) -> list[str]:
    """Every landed table and month into ``raw`` and ``validated`` (as the raw and validated assets, one transaction
    per table and stage, raw's rows written together); returns the months landed in any feed."""
    from mlops_assets.catalog import CATALOG
    from mlops_assets.core.ingest import ingest_raw, validate_partitions
    from mlops_assets.core.landing import find_landed, landed_months
    from mlops_assets.core.store import partition_writer, qualified, transaction

    now = datetime.now()
    every: set[str] = set()
    for feed in CATALOG.feeds:  # reference tables first: the monthly tables' codes are checked against them
        months = landed_months(settings.landing_dir, [t.name for t in feed.monthly_tables])
        every.update(months)
        for table in sorted(feed.tables, key=lambda t: t.monthly):
            parts = months if table.monthly else [None]
            with partition_writer(conn, qualified("raw", table.name)) as raw_rows:
                for month in parts:
                    landed = find_landed(settings.landing_dir, table.name, month)
                    assert landed is not None, (table.name, month)
                    quarantine = settings.quarantine_dir
                    ingest_raw(conn, table, landed, settings.landing_dir, quarantine, run_id, now, raw_rows)
            with transaction(conn):
                validate_partitions(conn, table, parts, run_id, now, feed.code_users(table.name))
    return sorted(every)


class Stages:
    """Wall and CPU seconds (the whole process's: every thread of DuckDB, polars and LightGBM) spent in each named
    stage, summed over its uses (each model's training is one use of "LightGBM training")."""

    def __init__(self) -> None:
        self.spent: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            spent = self.spent.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            spent["wall_s"] += time.perf_counter() - wall
            spent["cpu_s"] += time.process_time() - cpu


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Every step once; returns each model's test-month metrics and decision, and the time of each stage."""
    stage = Stages()
    with stage("imports"):
        import numpy as np
        import polars as pl

        from mlops_assets.catalog import CATALOG
        from mlops_assets.core import evaluation as ev
        from mlops_assets.core.drift import reference_profile
        from mlops_assets.core.features import write_months
        from mlops_assets.core.landing import write_atomic
        from mlops_assets.core.online import build_export, write_export
        from mlops_assets.core.policy import decide_promotion_from, scores_are_sane
        from mlops_assets.core.records import EvaluationResult
        from mlops_assets.core.registry import CHAMPION, Registry
        from mlops_assets.core.settings import load_settings
        from mlops_assets.core.store import (
            connect_warehouse,
            ensure_table_like,
            fetch_row,
            query_frame,
            replace_where,
            transaction,
        )
        from mlops_assets.core.training import load_version, split_by_time, stored_training_set, train_model

    settings = load_settings()
    run_id, out = "plain", {}
    # the models the parent passed settings for (all the catalog's, or one alone), and their feature tables
    models = [model for model in CATALOG.models if model.name in config["models"]]
    conn = connect_warehouse(settings.warehouse_path, {"memory_limit": "4GB", "threads": 2})
    with stage("ingest and validation"):
        months = ingest_and_validate(conn, settings, run_id)
    with stage("features"):
        for spec in {model.features.name: model.features for model in models}.values():
            write_months(conn, spec, months)
    window = config["window_months"]
    for model in models:
        spec, own = model.features, config["models"][model.name]
        with stage("training sets (split, stored, read back, hashed)"):
            # stored and read back in its stored order, as the asset does
            built_months = months[-window:] if window else months
            rows = query_frame(
                conn,
                f'SELECT * FROM features."{spec.name}" WHERE _month BETWEEN ? AND ?',
                [built_months[0], built_months[-1]],
            )
            split = split_by_time(rows, spec, built_months[-1])
            with transaction(conn):
                name = ensure_table_like(conn, model.name, "training_set", split.frame)
                replace_where(conn, name, split.frame, "true", [])
            order = ", ".join(f'"{c}"' for c in (spec.time_column, *spec.key))
            built = stored_training_set(query_frame(conn, f"SELECT * FROM {name} ORDER BY {order}"))
            training_set_hash = built.content_hash  # hashed here, as the asset hashes it for its data version
        with stage("LightGBM training (train_model)"):
            trained = train_model(built, spec, own["params"], own["num_boost_round"], own["early_stopping_rounds"])
        with stage("challenger's registration (validation scores, profile, registry)"):
            valid, train = built.part("valid"), built.part("train")
            valid_metrics = ev.metrics(valid[spec.label].to_numpy(), trained.predict(valid))
            sample = train.gather_every(max(1, train.height // config["profile_rows"]))
            profile = reference_profile(sample, spec.numeric, spec.categorical, trained.predict(sample), spec.label)
            registry = Registry(settings.model(model.name).registry_dir)
            metadata = {
                "model": model.name,
                "training_set_hash": training_set_hash,
                "params": trained.params,
                "best_iteration": trained.best_iteration,
                "metrics": {"valid": valid_metrics},
                "data": built.summary(spec.time_column),
                "encoder": trained.encoder.to_json(),
            }
            challenger = registry.register(trained.text, metadata, profile, run_id=run_id).version
            registry.set_alias("challenger", challenger, "challenger", "latest trained model", run_id=run_id)
        with stage("evaluation (test scores, metrics, slices)"):
            test = built.part("test")
            y = test[spec.label].to_numpy().astype(float)
            champion = registry.alias(CHAMPION)
            versions = {"challenger": challenger, **({"champion": champion} if champion else {})}
            loaded = {role: load_version(registry, v) for role, v in versions.items()}
            scores = {role: m.predict(test) for role, m in loaded.items()}
            results = {role: ev.metrics(y, p) for role, p in scores.items()}
            slices = ev.slice_metrics(test, spec.label, scores, model.slices)
            result = EvaluationResult.from_evaluation(
                model.name,
                challenger,
                champion,
                str(test["_month"].max()),
                results,
                slices,
                scores_are_sane(scores["challenger"]),
            )
            registry.save_evaluation(result, run_id=run_id)
        with stage("evaluation plots"):
            booster = loaded["challenger"]
            gains = booster.booster.feature_importance("gain")
            plots = ev.evaluation_plots(
                y, scores, booster.encoder.feature_names, gains, slices, model.gates.slice_min_rows
            )
            for plot, png in plots.items():
                write_atomic(settings.model(model.name).reports_dir / "evaluation" / challenger / f"{plot}.png", png)
        with stage("promotion, canary, online store"):
            decision = decide_promotion_from(result, model.gates)
            if decision.promote:
                registry.set_alias(CHAMPION, challenger, "promoted", decision.summary, run_id=run_id)
            serving = registry.alias(CHAMPION)
            if serving:
                canary = load_version(registry, serving).predict(test.head(config["canary_rows"]))
                assert scores_are_sane(canary) is None and np.ptp(canary) > 0, "canary"
            if spec.online is not None:
                (newest,) = fetch_row(conn, f'SELECT max(_month) FROM features."{spec.name}"')
                write_export(build_export(conn, spec, newest), settings.model(model.name).online_store_dir)
        out[model.name] = {
            "test_month": result.test_month,
            "roc_auc": results["challenger"]["roc_auc"],
            "promoted": decision.promote,
            "rows": int(pl.Series(y).len()),
        }
    conn.close()
    return {"models": out, "stages": stage.spent}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(os.environ[CONFIG_ENV]))))
