"""Evaluation: challenger and champion scored on the same held-out month, with slices, calibration and plots."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from mlops_assets.core.evaluation import evaluation_plots, markdown_image, metrics, slice_metrics
from mlops_assets.core.features import feature_set_version
from mlops_assets.core.landing import write_atomic
from mlops_assets.core.policy import scores_are_sane
from mlops_assets.core.records import EvaluationResult
from mlops_assets.core.registry import RegistryIntegrityError, comparable_champion
from mlops_assets.core.specs import ModelSpec
from mlops_assets.core.training import load_version, trained_through
from mlops_assets.defs.keys import MODEL_TAG, keys_of
from mlops_assets.defs.partitions import DUCKDB_POOL
from mlops_assets.defs.resources import PlatformStorage
from mlops_assets.defs.train import read_test_rows, registered_challenger


def build_evaluation_asset(model: ModelSpec) -> dg.AssetsDefinition:
    spec = model.features
    keys = keys_of(model)

    @dg.asset(
        key=keys.evaluation,
        deps=[keys.challenger, keys.training_set],  # it scores the training set's test month
        automation_condition=dg.AutomationCondition.eager(),
        group_name=model.name,
        tags={MODEL_TAG: model.name},
        pool=DUCKDB_POOL,
        kinds={"lightgbm", "matplotlib"},
        description="The challenger and the current champion scored on the same test month that neither trained on: "
        "ROC AUC, PR AUC, log loss, Brier score, calibration error and base rate, overall and per slice, with ROC, "
        "calibration, feature-importance and slice plots. The result is stored in the model's registry (promotion "
        f"and rollback read it there); the report goes to `$MLOPS_DATA_DIR/reports/{model.name}/evaluation/` "
        "(one folder per version) and is shown here.",
    )
    def evaluation(
        context: dg.AssetExecutionContext, duckdb: DuckDBResource, storage: PlatformStorage
    ) -> dg.MaterializeResult:
        registry = storage.registry(model.name)
        challenger = registered_challenger(registry, model)
        champion, not_compared = comparable_champion(registry, feature_set_version(spec))
        if not_compared:
            context.log.warning(f"{model.name}: {not_compared}; the challenger is judged against the base rate")
        with duckdb.get_connection() as conn:
            test = read_test_rows(conn, model)
        y = test[spec.label].to_numpy().astype(float)
        versions = {"challenger": challenger, **({"champion": champion} if champion and champion != challenger else {})}
        # judged on rows it learnt from, a version would win by memory, not by skill: the champion, or the challenger
        # itself when it is the champion evaluated again on a training set whose test month it trained on
        first = test[spec.time_column].min()
        for role, version in versions.items():
            seen = trained_through(registry.get(version).metadata)
            if seen is not None and first is not None and seen >= first:
                raise dg.Failure(
                    description=f"{role} {version} learnt from rows up to {seen}, inside the test month "
                    f"{test['_month'].max()} (from {first}): it cannot be judged on it. Evaluate on a month after "
                    f"its training data: land and build one (`mlops replay --month YYYY-MM`), then retrain"
                )
        loaded = {}
        for name, version in versions.items():
            try:
                loaded[name] = load_version(registry, version)
            except RegistryIntegrityError as error:
                # a damaged champion cannot be judged against, nor a challenger promoted over it: the way on is a
                # rollback to a sound version (which passes over damaged ones), then this evaluation again
                fix = (
                    f"roll back first (`mlops rollback --model {model.name}`), then materialize {model.name}/evaluation "
                    "again"
                    if name == "champion"
                    else "retrain (materialize the challenger again)"
                )
                raise dg.Failure(description=f"{name} {version}: {error}: {fix}") from None
        scores = {name: m.predict(test) for name, m in loaded.items()}
        results = {name: metrics(y, p) for name, p in scores.items()}
        slices = slice_metrics(test, spec.label, scores, model.slices)
        result = EvaluationResult.from_evaluation(
            model=model.name,
            challenger_version=challenger,
            champion_version=versions.get("champion"),
            test_month=str(test["_month"].max()),
            metrics=results,
            slices=slices,
            challenger_score_problem=scores_are_sane(scores["challenger"]),
        )
        registry.save_evaluation(result, run_id=context.run.run_id)  # what promotion and rollback decide on

        out = storage.model(model.name).reports_dir / "evaluation" / challenger
        challenger_model = loaded["challenger"]
        plots = evaluation_plots(
            y,
            scores,
            challenger_model.encoder.feature_names,
            challenger_model.booster.feature_importance("gain"),
            slices,
            model.gates.slice_min_rows,
        )
        for name, png in plots.items():
            write_atomic(out / f"{name}.png", png)
        report = _report(model, result, versions, plots)
        write_atomic(out / "report.md", report.encode())
        context.log.info(
            f"{model.name}, test month {result.test_month}: challenger {challenger} AUC {results['challenger']['roc_auc']:.4f}"
            + (
                f", champion {champion} AUC {results['champion']['roc_auc']:.4f}"
                if "champion" in results
                else ", no champion yet"
            )
        )
        numbers = {f"{name}_{metric}": float(value) for name, m in results.items() for metric, value in m.items()}
        return dg.MaterializeResult(
            metadata={
                **numbers,
                "challenger_version": challenger,
                **({"champion_version": champion} if champion else {}),  # absent for a first model
                "test_month": result.test_month,
                "report_path": dg.MetadataValue.path(str(out / "report.md")),
                "report": dg.MetadataValue.md(report),
            }
        )

    return evaluation


def _number(value: float | None, spec: str = ".4f") -> str:
    """A metric for the report; '-' when it could not be computed (e.g. PR AUC of a test month without positives)."""
    return "-" if value is None else format(value, spec)


def _report(model: ModelSpec, result: EvaluationResult, versions: dict[str, str], plots: dict[str, bytes]) -> str:
    results = result.metrics
    names = list(results)
    held_out = "held out from both models" if len(names) > 1 else "held out from the model; no champion yet"
    lines = [
        f"## {model.name}: evaluation on {result.test_month} ({held_out})",
        "",
        "| metric | " + " | ".join(f"{n} ({versions[n]})" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for metric in ("roc_auc", "pr_auc", "log_loss", "brier", "calibration_error", "base_rate"):
        lines.append(f"| {metric} | " + " | ".join(_number(results[n].get(metric)) for n in names) + " |")
    lines.append("| rows | " + " | ".join(_number(results[n].get("rows"), ",.0f") for n in names) + " |")
    lines += [
        "",
        markdown_image(plots["roc"], "ROC"),
        markdown_image(plots["calibration"], "calibration"),
        markdown_image(plots["slices"], "AUC per slice"),
        markdown_image(plots["importance"], "feature importance"),
        "",
    ]
    header = "| slice | value | rows | positives | base rate | " + " | ".join(f"{n} AUC" for n in names) + " |"
    lines += ["### Slices", "", header, "|---|---|---|---|---|" + "---|" * len(names)]
    for s in result.slices:
        aucs = {"challenger": s.challenger_auc, "champion": s.champion_auc}
        cells = " | ".join("-" if aucs[n] is None else f"{aucs[n]:.3f}" for n in names)
        lines.append(f"| {s.slice} | {s.value} | {s.rows} | {s.positives} | {s.base_rate:.3f} | {cells} |")
    return "\n".join(lines)
