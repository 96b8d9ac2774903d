"""Deployment: the promotion decision that moves (or keeps) the ``champion`` alias, and the check that it can serve."""

import json

import dagster as dg
import numpy as np
from dagster_duckdb import DuckDBResource
from pydantic import Field

from mlops_assets.core.policy import PromotionGates, decide_promotion, scores_are_sane
from mlops_assets.core.registry import CHAMPION, Registry
from mlops_assets.core.specs import ModelSpec
from mlops_assets.core.training import load_version
from mlops_assets.defs.evaluate import EVALUATION_KEY, evaluation_dir
from mlops_assets.defs.partitions import DUCKDB_POOL
from mlops_assets.defs.resources import PlatformStorage
from mlops_assets.defs.train import CHAMPION_FRESHNESS, CHAMPION_KEY, read_test_rows, registered_challenger

CANARY_ROWS = 500


class PromotionConfig(dg.Config):
    """The promotion gates (defaults of the design)."""

    min_auc_gain: float = Field(default=0.002, description="Required ROC AUC gain of the challenger over the champion.")
    max_log_loss_increase: float = Field(default=0.0, description="Allowed log-loss worsening (0 = must not worsen).")
    slice_min_rows: int = Field(default=500, description="Slices with fewer test rows are not judged.")
    max_slice_auc_drop: float = Field(default=0.02, description="Largest AUC loss allowed on any judged slice.")
    first_model_min_auc: float = Field(default=0.55, description="AUC a first model needs (the base-rate model has 0.5).")

    def gates(self) -> PromotionGates:
        return PromotionGates(**self.model_dump())


def build_champion_asset(model: ModelSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=CHAMPION_KEY,
        deps=[EVALUATION_KEY],
        automation_condition=dg.AutomationCondition.eager(),
        freshness_policy=CHAMPION_FRESHNESS,
        group_name="deploy",
        kinds={"lightgbm"},
        description="The promotion decision: the challenger becomes champion when, on the same held-out rows, its AUC "
        "beats the champion's by the margin, its log loss is no worse, no slice with enough rows regresses beyond its "
        "bound and every score is a finite probability (a first model must clearly beat the base-rate model). The "
        "`champion` alias moves or stays; the reason goes to the registry's event log and to this materialization.",
    )
    def champion(context: dg.AssetExecutionContext, config: PromotionConfig, storage: PlatformStorage) -> dg.MaterializeResult:
        registry = Registry(storage.registry_dir)
        challenger = registered_challenger(registry)
        evaluated = evaluation_dir(storage.reports_dir, challenger) / "evaluation.json"
        if not evaluated.exists():
            raise dg.Failure(description=f"challenger {challenger} has no evaluation yet: materialize reports/evaluation first")
        record = json.loads(evaluated.read_text())
        results = record["metrics"]
        current = registry.alias(CHAMPION)
        if current == challenger:
            return dg.MaterializeResult(metadata={"champion_version": current, "decision": "already champion"})
        if record["versions"].get("champion") != current:
            raise dg.Failure(
                description=f"the champion changed since the evaluation (evaluated against "
                f"{record['versions'].get('champion')}, now {current}): materialize reports/evaluation again"
            )
        decision = decide_promotion(
            results["challenger"], results.get("champion"), record["challenger_score_problem"], record["slices"], config.gates()
        )
        if decision.promote:
            registry.set_alias(CHAMPION, challenger, "promoted", decision.summary, run_id=context.run.run_id)
        else:
            registry.log_event("rejected", version=challenger, reason=decision.summary, run_id=context.run.run_id)
        (context.log.info if decision.promote else context.log.warning)(f"{challenger}: {decision.summary}")
        serving = "challenger" if decision.promote else "champion"
        return dg.MaterializeResult(
            metadata={
                "champion_version": dg.MetadataValue.text(str(registry.alias(CHAMPION))),
                "challenger_version": challenger,
                "promoted": decision.promote,
                "decision": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons)),
                **({"champion_roc_auc": float(results[serving]["roc_auc"])} if serving in results else {}),
            }
        )

    return champion


def build_champion_check(model: ModelSpec) -> dg.AssetChecksDefinition:
    spec = model.training_features

    @dg.asset_check(
        asset=CHAMPION_KEY,
        name="champion_is_servable",
        pool=DUCKDB_POOL,
        blocking=True,
        description=f"The champion loads from the registry, matches its checksum and scores a canary batch of "
        f"{CANARY_ROWS} test rows with finite, non-constant probabilities. Blocking.",
    )
    def champion_is_servable(duckdb: DuckDBResource, storage: PlatformStorage) -> dg.AssetCheckResult:
        registry = Registry(storage.registry_dir)
        version = registry.alias(CHAMPION)
        if version is None:
            return dg.AssetCheckResult(passed=False, description="no champion: the first model was not promoted")
        try:
            loaded = load_version(registry, version)
        except Exception as error:  # integrity and parse errors alike mean: cannot serve
            return dg.AssetCheckResult(passed=False, description=f"champion {version} cannot be loaded: {error}")
        with duckdb.get_connection() as conn:
            canary = read_test_rows(conn, spec).head(CANARY_ROWS)
        scores = loaded.predict(canary)
        problem = scores_are_sane(scores) or ("all canary scores are equal" if np.ptp(scores) == 0 else None)
        return dg.AssetCheckResult(
            passed=problem is None,
            description=problem or f"champion {version} scored {len(scores)} canary rows sanely",
            metadata={"champion_version": version, "canary_mean_score": float(np.mean(scores)), "canary_rows": len(scores)},
        )

    return champion_is_servable
