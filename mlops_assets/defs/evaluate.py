"""Evaluation: challenger and champion scored on the same held-out month, with slices, calibration and plots."""

import json
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from mlops_assets.core.evaluation import (
    calibration_plot,
    importance_plot,
    markdown_image,
    metrics,
    roc_plot,
    slice_metrics,
    slice_plot,
)
from mlops_assets.core.landing import write_atomic
from mlops_assets.core.policy import PromotionGates, scores_are_sane
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.specs import ModelSpec
from mlops_assets.core.training import load_version
from mlops_assets.defs.partitions import DUCKDB_POOL
from mlops_assets.defs.resources import PlatformStorage
from mlops_assets.defs.train import CHALLENGER_KEY, read_test_rows, registered_challenger

EVALUATION_KEY = dg.AssetKey(["reports", "evaluation"])


def evaluation_dir(reports_dir: Path, challenger: str) -> Path:
    return reports_dir / "evaluation" / challenger


def evaluated_roc_auc(reports_dir: Path, version: str) -> float | None:
    """The ROC AUC a version had on its own test month when it was evaluated as the challenger (None if never)."""
    path = evaluation_dir(reports_dir, version) / "evaluation.json"
    if not path.exists():
        return None
    return float(json.loads(path.read_text())["metrics"]["challenger"]["roc_auc"])


def build_evaluation_asset(model: ModelSpec) -> dg.AssetsDefinition:
    spec = model.training_features

    @dg.asset(
        key=EVALUATION_KEY,
        deps=[CHALLENGER_KEY],
        automation_condition=dg.AutomationCondition.eager(),
        group_name="evaluate",
        pool=DUCKDB_POOL,
        kinds={"lightgbm", "matplotlib"},
        description="The challenger and the current champion scored on the same test month that neither trained on: "
        "ROC AUC, PR AUC, log loss, Brier score, calibration error and base rate, overall and per slice, with ROC, "
        "calibration, feature-importance and slice plots. Written to $MLOPS_DATA_DIR/reports/evaluation/<version>/ "
        "and shown here as a Markdown report.",
    )
    def evaluation(context: dg.AssetExecutionContext, duckdb: DuckDBResource, storage: PlatformStorage) -> dg.MaterializeResult:
        registry = Registry(storage.registry_dir)
        challenger = registered_challenger(registry)
        champion = registry.alias(CHAMPION)
        with duckdb.get_connection() as conn:
            test = read_test_rows(conn, spec)
        y = test[spec.label].to_numpy().astype(float)
        versions = {"challenger": challenger, **({"champion": champion} if champion and champion != challenger else {})}
        loaded = {name: load_version(registry, version) for name, version in versions.items()}
        scores = {name: m.predict(test) for name, m in loaded.items()}
        results = {name: metrics(y, p) for name, p in scores.items()}
        slices = slice_metrics(test, spec.label, scores, model.slices)

        out = evaluation_dir(storage.reports_dir, challenger)
        plots = {
            "roc": roc_plot(y, scores),
            "calibration": calibration_plot(y, scores),
            "importance": importance_plot(loaded["challenger"].encoder.feature_names, loaded["challenger"].booster.feature_importance("gain")),
            "slices": slice_plot(slices, list(scores), PromotionGates().slice_min_rows),
        }
        for name, png in plots.items():
            write_atomic(out / f"{name}.png", png)
        record = {
            "versions": versions,
            "test_month": str(test["_month"].max()),
            "metrics": results,
            "slices": slices.to_dicts(),
            "challenger_score_problem": scores_are_sane(scores["challenger"]),
        }
        write_atomic(out / "evaluation.json", json.dumps(record, indent=1).encode())
        report = _report(record, plots)
        write_atomic(out / "report.md", report.encode())
        context.log.info(f"test month {record['test_month']}: challenger {challenger} AUC {results['challenger']['roc_auc']:.4f}" + (
            f", champion {champion} AUC {results['champion']['roc_auc']:.4f}" if "champion" in results else ", no champion yet"))
        numbers = {f"{name}_{metric}": float(value) for name, m in results.items() for metric, value in m.items()}
        return dg.MaterializeResult(
            metadata={
                **numbers,
                "challenger_version": challenger,
                "champion_version": dg.MetadataValue.text(str(champion)),
                "test_month": record["test_month"],
                "report_path": dg.MetadataValue.path(str(out / "report.md")),
                "report": dg.MetadataValue.md(report),
            }
        )

    return evaluation


def _report(record: dict, plots: dict[str, bytes]) -> str:
    results = record["metrics"]
    names = list(results)
    lines = [
        f"## Evaluation on {record['test_month']} (held out from both models)",
        "",
        "| metric | " + " | ".join(f"{n} ({record['versions'][n]})" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for metric in ("roc_auc", "pr_auc", "log_loss", "brier", "calibration_error", "base_rate"):
        lines.append(f"| {metric} | " + " | ".join(f"{results[n][metric]:.4f}" for n in names) + " |")
    lines.append("| rows | " + " | ".join(f"{int(results[n]['rows']):,}" for n in names) + " |")
    lines += ["", markdown_image(plots["roc"], "ROC"), markdown_image(plots["calibration"], "calibration"),
              markdown_image(plots["slices"], "AUC per slice"), markdown_image(plots["importance"], "feature importance"), ""]  # fmt: skip
    lines += ["### Slices", "", "| slice | value | rows | base rate | " + " | ".join(f"{n} AUC" for n in names) + " |",
              "|---|---|---|---|" + "---|" * len(names)]  # fmt: skip
    for s in record["slices"]:
        lines.append(f"| {s['slice']} | {s['value']} | {s['rows']} | {s['base_rate']:.3f} | "
                     + " | ".join(f"{s[f'{n}_auc']:.3f}" for n in names) + " |")  # fmt: skip
    return "\n".join(lines)
