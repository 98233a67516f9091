"""The stages of `emo run`, in order: tile → features → expression → train → predict → null →
evaluate → analyze → report. Each calls one public stage API with the config object that stage owns
(imported inside, so this module imports on its own).

Paths inside `<out>`: tiles/, features/<backbone>/, targets.h5ad, model/, predictions/,
evaluate/null/perm_<k>/ (the permuted-label null heads), evaluate/<split>/, analyze/, report.html.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from emo.errors import EmoError
from emo.run.config import StudyConfig
from emo.run.runner import Stage, StudyContext


def _cfg(ctx: StudyContext) -> StudyConfig:
    return ctx.config


def _with_executor(fn: Any, ctx: StudyContext, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Hand the study's executor to stage APIs that fan out through one (`executor=` keyword)."""
    if "executor" in inspect.signature(fn).parameters:
        # Local: the stage builds its own pool sized by its `workers` setting; Ray/SLURM: one shared executor.
        kwargs["executor"] = "local" if ctx.executor_name == "local" else ctx.executor()
    return kwargs


def _genes(spec: str | list[str] | None) -> list[str] | None:
    from emo.panels import resolve_genes

    return resolve_genes(spec) if spec else None


def _paths(ctx: StudyContext, names: list[str]) -> list[Path]:
    return [_cfg(ctx).path(n) for n in names]


# ---------------------------------------------------------------- tile


def _stain_reference_file(ctx: StudyContext) -> Path | None:
    """The stain reference when it names an image file (relative to the study), not a built-in name."""
    ref = _cfg(ctx).slides.stain_reference
    return _cfg(ctx).path(ref) if ref and _cfg(ctx).path(ref).is_file() else None


def tiling_config(ctx: StudyContext):
    return _cfg(ctx).slides.tiling(_cfg(ctx).path)


def run_tile(ctx: StudyContext) -> None:
    from emo.slides import tile_slides

    kwargs = _with_executor(tile_slides, ctx, {"workers": _cfg(ctx).slides.workers})
    tile_slides(_cfg(ctx).slide_paths(), ctx.out_dir, tiling_config(ctx), **kwargs)


def tile_inputs(ctx: StudyContext) -> list[Path]:
    s = _cfg(ctx).slides
    reference = _stain_reference_file(ctx)
    return _cfg(ctx).slide_paths() + ([_cfg(ctx).path(s.roi)] if s.roi else []) + ([reference] if reference else [])


# ---------------------------------------------------------------- features


def feature_dir(ctx: StudyContext) -> Path:
    from emo.features.extract import backbone_dir_name

    return ctx.out_dir / "features" / backbone_dir_name(_cfg(ctx).features.backbone)


def run_features(ctx: StudyContext) -> None:
    from emo.features import extract_features

    kwargs = _cfg(ctx).features.model_dump()
    extract_features(ctx.out_dir / "tiles", ctx.out_dir, **_with_executor(extract_features, ctx, kwargs))


# ---------------------------------------------------------------- expression


def targets_path(ctx: StudyContext) -> Path:
    e = _cfg(ctx).expression
    return _cfg(ctx).path(e.targets) if e.targets else ctx.out_dir / "targets.h5ad"


def run_expression(ctx: StudyContext) -> None:
    from emo.expression import prepare_targets

    e = _cfg(ctx).expression
    prepare_targets(
        _paths(ctx, e.matrices), _cfg(ctx).path(e.samples), e.reference_cohort, targets_path(ctx),
        counts_matrices=_paths(ctx, e.counts_matrices), **e.options(),
    )


def expression_inputs(ctx: StudyContext) -> list[Path]:
    e = _cfg(ctx).expression
    return _paths(ctx, e.matrices) + _paths(ctx, e.counts_matrices) + ([_cfg(ctx).path(e.samples)] if e.samples else [])


# ---------------------------------------------------------------- train


def model_dir(ctx: StudyContext) -> Path:
    return ctx.out_dir / "model"


def run_train(ctx: StudyContext) -> None:
    t = _cfg(ctx).training
    if t.protocol == "paper":
        from emo.training.paper import train_paper_protocol

        train_paper_protocol(
            ctx.out_dir / "tiles", targets_path(ctx), model_dir(ctx), _genes(t.genes), t.paper_config(),
            **_with_executor(train_paper_protocol, ctx, {}),
        )
    else:
        from emo.training import train_model

        train_model(feature_dir(ctx), targets_path(ctx), model_dir(ctx), t.model_copy(update={"genes": _genes(t.genes)}))


def train_inputs(ctx: StudyContext) -> list[Path]:
    upstream = ctx.out_dir / "tiles" if _cfg(ctx).training.protocol == "paper" else feature_dir(ctx)
    return [upstream, targets_path(ctx)]


# ---------------------------------------------------------------- predict → evaluate → analyze → report


def run_predict(ctx: StudyContext) -> None:
    from emo.prediction import predict

    p = _cfg(ctx).prediction
    if _cfg(ctx).training.protocol == "paper":  # one CNN per gene: predicts from tile pixels
        predict(model_dir(ctx), None, ctx.out_dir / "predictions", genes=_genes(p.genes), panel=p.panel, tiles=ctx.out_dir / "tiles")
    else:
        predict(model_dir(ctx), feature_dir(ctx), ctx.out_dir / "predictions", genes=_genes(p.genes), panel=p.panel)


def predictions_path(ctx: StudyContext) -> Path:
    return ctx.out_dir / "predictions" / "average.h5ad"


def _has_null(ctx: StudyContext) -> bool:
    return _cfg(ctx).evaluation.null_baseline and _cfg(ctx).training.protocol == "features"


def null_dir(ctx: StudyContext) -> Path:
    return ctx.out_dir / "evaluate" / "null"


def null_predictions_paths(ctx: StudyContext) -> list[Path]:
    """EMO-average of each permuted-label head: evaluate/null/perm_<k>/predictions/average.h5ad."""
    return [null_dir(ctx) / f"perm_{k:02d}" / "predictions" / "average.h5ad"
            for k in range(_cfg(ctx).evaluation.null_permutations)]


def run_null(ctx: StudyContext) -> None:
    """The null distribution: the study's head refitted on K permutations of the patients' labels (seeds
    seed … seed + K − 1), each predicting the same slides."""
    from emo.prediction import predict
    from emo.training import train_model

    t = _cfg(ctx).training
    for k, predictions in enumerate(null_predictions_paths(ctx)):
        model = predictions.parent.parent / "permuted_model"
        train_model(feature_dir(ctx), targets_path(ctx), model,
                    t.model_copy(update={"genes": _genes(t.genes), "permute_labels": True, "seed": t.seed + k}))
        predict(model, feature_dir(ctx), predictions.parent)


def evaluate_dir(ctx: StudyContext, split: str) -> Path:
    return ctx.out_dir / "evaluate" / split


def run_evaluate(ctx: StudyContext) -> None:
    """Each split in `evaluation.splits` into evaluate/<split>/; a test split after a selection split
    also gets the ρ concordance with it; every split is compared with the null baseline when enabled."""
    from emo.analysis import EvaluateConfig, evaluate

    v = _cfg(ctx).evaluation
    base = EvaluateConfig.build(**v.thresholds.model_dump())
    if _has_null(ctx):
        base = base.model_copy(update={"null_predictions": tuple(null_predictions_paths(ctx))})
    validation_genes = None
    for split in v.splits:
        is_test = split.startswith("test")
        config = base.model_copy(update={"validation_genes": validation_genes}) if is_test else base
        evaluate(predictions_path(ctx), targets_path(ctx), split, evaluate_dir(ctx, split), config)
        if not is_test:
            validation_genes = evaluate_dir(ctx, split) / "genes.csv"


def evaluate_inputs(ctx: StudyContext) -> list[Path]:
    return [predictions_path(ctx), targets_path(ctx)] + (null_predictions_paths(ctx) if _has_null(ctx) else [])


def _enrich_table(ctx: StudyContext) -> Path:
    """Enrichment ranks genes by how well they are predicted on the first evaluated split."""
    return ctx.out_dir / "evaluate" / _cfg(ctx).evaluation.splits[0] / "genes.csv"


def run_analyze(ctx: StudyContext) -> None:
    from emo import analysis

    a = _cfg(ctx).analyses
    out = ctx.out_dir / "analyze"
    measured, predicted = targets_path(ctx), predictions_path(ctx)
    if a.clusters is not None:
        analysis.clusters(measured, predicted, out / "clusters", a.clusters)
    if a.differential_expression is not None:
        analysis.differential_expression(measured, predicted, out / "differential_expression", a.differential_expression)
    if a.enrich is not None:
        if not a.gmt:
            raise EmoError("analyses.enrich: needs gene-set files; list them under analyses.gmt")
        analysis.enrich(_enrich_table(ctx), _paths(ctx, a.gmt), out / "enrich", a.enrich, measured=measured)


def analyze_inputs(ctx: StudyContext) -> list[Path]:
    a = _cfg(ctx).analyses
    return [predictions_path(ctx), targets_path(ctx), *_paths(ctx, a.gmt)] + ([_enrich_table(ctx)] if a.enrich is not None else [])


def run_report(ctx: StudyContext) -> None:
    from emo.reports import build_report

    build_report(ctx.out_dir, ctx.out_dir / "report.html")


def _dump(section: str):
    return lambda ctx: getattr(_cfg(ctx), section).model_dump(mode="json")


def _has_analyses(ctx: StudyContext) -> bool:
    a = _cfg(ctx).analyses
    return any(x is not None for x in (a.clusters, a.differential_expression, a.enrich))


def _has_expression(ctx: StudyContext) -> bool:
    return not _cfg(ctx).expression.targets


STAGES: tuple[Stage, ...] = (
    Stage("tile", run_tile, tile_inputs, _dump("slides"), lambda ctx: [ctx.out_dir / "tiles"]),
    Stage("features", run_features, lambda ctx: [ctx.out_dir / "tiles"], _dump("features"), lambda ctx: [feature_dir(ctx)], ("tile",)),
    Stage("expression", run_expression, expression_inputs, _dump("expression"), lambda ctx: [targets_path(ctx)], enabled=_has_expression),
    Stage("train", run_train, train_inputs, _dump("training"), lambda ctx: [model_dir(ctx)], ("features", "expression")),
    Stage(
        "predict", run_predict, lambda ctx: [model_dir(ctx), train_inputs(ctx)[0]], _dump("prediction"),
        lambda ctx: [ctx.out_dir / "predictions"], ("train",),
    ),
    Stage(
        "null", run_null, lambda ctx: [feature_dir(ctx), targets_path(ctx)],
        lambda ctx: {**_dump("training")(ctx), "null_permutations": _cfg(ctx).evaluation.null_permutations},
        lambda ctx: [null_dir(ctx)],
        ("features", "expression"), enabled=_has_null,
    ),
    Stage(
        "evaluate", run_evaluate, evaluate_inputs, _dump("evaluation"),
        lambda ctx: [evaluate_dir(ctx, split) for split in _cfg(ctx).evaluation.splits], ("predict", "null"),
    ),
    Stage(
        "analyze", run_analyze, analyze_inputs, _dump("analyses"), lambda ctx: [ctx.out_dir / "analyze"], ("predict", "evaluate"),
        enabled=_has_analyses,
    ),
    Stage("report", run_report, lambda ctx: [], lambda ctx: {}, lambda ctx: [ctx.out_dir / "report.html"], ("evaluate", "analyze")),
)

STAGE_NAMES = tuple(s.name for s in STAGES)


def study_stages(config: StudyConfig) -> tuple[Stage, ...]:
    """Bulk stages, or the spot-level ones (`emo.run.spot_study`) when the study has a `spatial:` section."""
    if config.spatial is not None:
        from emo.run.spot_study import SPATIAL_STAGES

        return SPATIAL_STAGES
    return STAGES


def run_study(config: StudyConfig, from_stage: str | None = None, executor: str | None = None, wait: bool = False) -> dict[str, str]:
    """Run (or resume) a whole study; returns each stage's status. `executor` overrides the config's.
    The output folder is locked for the run (`emo.run.lock`): another run on it refuses, or waits with `wait`."""
    from emo.executors import executor_names
    from emo.run.lock import folder_lock
    from emo.run.runner import run_stages

    name = executor or config.executor.name
    if name not in executor_names():
        raise EmoError(f"--executor {name}: unknown; choose one of {', '.join(executor_names())}")
    options = config.executor.options if name == config.executor.name else {}
    config.check_files()
    ctx = StudyContext(config=config, out_dir=config.out_dir, executor_name=name, executor_options=options)
    with folder_lock(config.out_dir, "emo run", wait=wait):
        return run_stages(study_stages(config), ctx, from_stage=from_stage)
