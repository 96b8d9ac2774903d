"""Deployment: each model's promotion decision that moves (or keeps) its ``champion`` alias, and the check that the
champion can serve."""

from dataclasses import asdict

import dagster as dg
import numpy as np
from dagster_duckdb import DuckDBResource
from pydantic import Field

from mlops_assets.core.features import feature_set_version
from mlops_assets.core.policy import PromotionGates, decide_promotion_from, scores_are_sane
from mlops_assets.core.registry import CHAMPION, AliasMovedError, comparable_champion, rolled_back_from
from mlops_assets.core.specs import ModelSpec
from mlops_assets.core.training import load_version
from mlops_assets.defs.configs import with_model_defaults
from mlops_assets.defs.keys import MODEL_TAG, keys_of
from mlops_assets.defs.partitions import DUCKDB_POOL
from mlops_assets.defs.resources import PlatformStorage
from mlops_assets.defs.train import CHAMPION_FRESHNESS, read_test_rows, registered_challenger

CANARY_ROWS = 500


class PromotionConfig(dg.Config):
    """The promotion gates (a model's spec sets its own defaults)."""

    min_auc_gain: float = Field(default=0.002, description="Required ROC AUC gain of the challenger over the champion.")
    max_log_loss_increase: float = Field(default=0.0, description="Allowed log-loss worsening (0 = must not worsen).")
    slice_min_rows: int = Field(default=500, description="Slices with fewer test rows are not judged.")
    max_slice_auc_drop: float = Field(default=0.02, description="Largest AUC loss allowed on any judged slice.")
    first_model_min_auc: float = Field(
        default=0.55, description="AUC a first model needs (the base-rate model has 0.5)."
    )
    max_pr_auc_drop: float | None = Field(
        default=None, description="Largest PR AUC loss allowed against the champion (None: PR AUC not judged)."
    )
    first_model_min_pr_lift: float | None = Field(
        default=None, description="PR AUC a first model needs, as a multiple of the base rate (None: not judged)."
    )
    slice_min_positives: int = Field(default=0, description="Slices with fewer positive test rows are not judged.")
    max_plausible_auc: float | None = Field(
        default=0.99,
        description="A test ROC AUC above this is refused as too good to believe: a feature likely leaks the label "
        "(None: not judged).",
    )

    def gates(self) -> PromotionGates:
        return PromotionGates(**self.model_dump())


def promotion_config_for(model: ModelSpec) -> type[PromotionConfig]:
    """The Launchpad's gates of ``model``: its spec's gates as the defaults."""
    return with_model_defaults(PromotionConfig, model.name, asdict(model.gates))


def build_champion_asset(model: ModelSpec) -> dg.AssetsDefinition:
    keys = keys_of(model)
    config_class = promotion_config_for(model)

    @dg.asset(
        key=keys.champion,
        deps=[keys.evaluation],
        automation_condition=dg.AutomationCondition.eager(),
        freshness_policy=CHAMPION_FRESHNESS,
        group_name=model.name,
        tags={MODEL_TAG: model.name},
        kinds={"lightgbm"},
        description="The promotion decision: the challenger becomes champion when, on the same held-out rows, it "
        "passes the model's gates (ROC AUC gain, no worse log loss, PR AUC where the model judges it, no slice with "
        "enough rows and positives regressing beyond its bound, every score a finite probability; a first model must "
        "clearly beat the base-rate model; an AUC too good to believe, the mark of a feature leaking the label, is "
        "refused). The evaluation it judges is read from the model's registry. The "
        "`champion` alias moves or stays; the reason goes to the registry's event log and to this materialization.",
    )
    def champion(
        context: dg.AssetExecutionContext, config: config_class, storage: PlatformStorage
    ) -> dg.MaterializeResult:  # type: ignore[valid-type]
        registry = storage.registry(model.name)
        challenger = registered_challenger(registry, model)
        result = registry.evaluation(challenger)
        if result is None:
            raise dg.Failure(
                description=f"challenger {challenger} has no evaluation yet: materialize {model.name}/evaluation first"
            )
        current = registry.alias(CHAMPION)
        if current == challenger:
            return dg.MaterializeResult(
                metadata={"champion_version": current, "decision": "already champion"},
                data_version=dg.DataVersion(current),
            )
        # a champion trained on another feature set is not judged against (the evaluation said so)
        comparable, _ = comparable_champion(registry, feature_set_version(model.features))
        if result.champion_version != comparable:
            raise dg.Failure(
                description=f"the champion changed since the evaluation (evaluated against {result.champion_version}, "
                f"now {current}): materialize {model.name}/evaluation again"
            )
        decision = decide_promotion_from(result, config.gates(), rolled_back=rolled_back_from(registry))
        if decision.promote:
            # expected: the champion it was judged against (a rollback meanwhile refuses the move, not undone by it)
            try:
                registry.set_alias(  # with the evaluation it passed on: the AUC the rollback rule holds it to
                    CHAMPION,
                    challenger,
                    "promoted",
                    decision.summary,
                    run_id=context.run.run_id,
                    expected=current,
                    roc_auc=result.metrics["challenger"]["roc_auc"],
                    test_month=result.test_month,
                )
            except AliasMovedError as error:
                raise dg.Failure(
                    description=f"{error} (since the evaluation): materialize {model.name}/evaluation again"
                ) from None
        else:
            # one decision per evaluation: a second run deciding the same (a crashed run's retry beside the
            # automation's run for the same challenger) says so instead of logging the rejection again
            earlier = [
                e
                for e in registry.events()
                if e.get("event") == "rejected"
                and e.get("version") == challenger
                and e.get("reason") == decision.summary
            ]
            if earlier:
                context.log.info(f"{challenger}: already rejected on this evaluation (run {earlier[-1].get('run_id')})")
            else:
                registry.log_event("rejected", version=challenger, reason=decision.summary, run_id=context.run.run_id)
        (context.log.info if decision.promote else context.log.warning)(
            f"{model.name} {challenger}: {decision.summary}"
        )
        serving = "challenger" if decision.promote else "champion"
        now_serving = registry.alias(CHAMPION)  # absent while no version has passed the gates
        return dg.MaterializeResult(
            # the version serving is the data: a decision that keeps it leaves the months it scored up to date
            data_version=dg.DataVersion(now_serving or "none"),
            metadata={
                **({"champion_version": now_serving} if now_serving else {}),
                "challenger_version": challenger,
                "promoted": decision.promote,
                "decision": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons)),
                **(
                    {"champion_roc_auc": result.metrics[serving]["roc_auc"]}
                    if now_serving and serving in result.metrics
                    else {}
                ),
            },
        )

    return champion


def build_champion_check(model: ModelSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=keys_of(model).champion,
        name="champion_is_servable",
        pool=DUCKDB_POOL,
        blocking=True,
        description=f"The champion loads from the registry, matches its checksum and scores a canary batch of "
        f"{CANARY_ROWS} test rows with finite, non-constant probabilities. Blocking; a warning only while no version "
        "has passed the gates yet.",
    )
    def champion_is_servable(duckdb: DuckDBResource, storage: PlatformStorage) -> dg.AssetCheckResult:
        registry = storage.registry(model.name)
        version = registry.alias(CHAMPION)
        if version is None:  # the gates kept every candidate out: nothing serves, which is no broken deployment
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"no {model.name} champion: no version has passed the promotion gates yet (the service "
                "answers 503 for this model until one does)",
            )
        try:
            loaded = load_version(registry, version)
        except Exception as error:  # noqa: BLE001 - integrity and parse errors alike mean: cannot serve
            return dg.AssetCheckResult(passed=False, description=f"champion {version} cannot be loaded: {error}")
        with duckdb.get_connection() as conn:
            canary = read_test_rows(conn, model).head(CANARY_ROWS)
        scores = loaded.predict(canary)
        problem = scores_are_sane(scores) or ("all canary scores are equal" if np.ptp(scores) == 0 else None)
        return dg.AssetCheckResult(
            passed=problem is None,
            description=problem or f"champion {version} scored {len(scores)} canary rows sanely",
            metadata={
                "champion_version": version,
                "canary_mean_score": float(np.mean(scores)),
                "canary_rows": len(scores),
            },
        )

    return champion_is_servable
