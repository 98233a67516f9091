"""Spot-level stages of `emo run` (study `spots:` section): spot_train → spot_predict →
spot_evaluate → report. Each calls `emo.spot_models`'s public functions; records work as for bulk stages.

Paths inside `<out>`: spot_model/, spot_predictions/<S>.csv + <S>.h5ad, spot_evaluate/ (sections.csv,
genes_<S>.csv, maps_<S>.png, r_histogram.png), report.html (the `spatial_*` folders of older runs are
read too); spot features come from the shared cache (`spots.cache`, default `emo.cache.cache_dir`),
so a study after `emo spatial train` on the same sections computes none.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from emo.errors import EmoError
from emo.run.runner import Stage, StudyContext

if TYPE_CHECKING:
    from emo.run.config import SpotStudyConfig, StudyConfig
    import pandas as pd


def _sp(ctx: StudyContext) -> SpotStudyConfig:
    return ctx.config.spots


def _data(ctx: StudyContext) -> Path:
    return ctx.config.path(_sp(ctx).data_dir)


def _cache(ctx: StudyContext) -> Path | None:
    c = _sp(ctx).cache
    return ctx.config.path(c) if c else None  # the shared default (`emo.cache.cache_dir`)


def eval_genes(ctx: StudyContext) -> list[str]:
    """The genes the study evaluates: a gene-list file (one symbol per line) or panel names/genes."""
    return _eval_genes(ctx.config)


def _eval_genes(cfg: StudyConfig) -> list[str]:
    from emo.panels import resolve_genes

    path = cfg.spot_genes_file()
    if path is not None:
        genes = resolve_genes(path)
        if not genes:
            raise EmoError(f"spots.genes: {path} lists no genes; one symbol per line")
        return genes
    return resolve_genes(cfg.spots.genes)


def study_genes(cfg: StudyConfig) -> list[str]:
    """Evaluated genes plus the PAM50 proliferation genes (for the proliferation-score ρ): the model's genes."""
    from emo.panels import get_panel

    genes = _eval_genes(cfg)
    return genes + [g for g in get_panel("pam50_proliferation") if g not in set(genes)]


def model_genes(ctx: StudyContext) -> list[str]:
    return study_genes(ctx.config)


def _layout(ctx: StudyContext):
    from emo.expression.her2st import Her2stLayout

    return Her2stLayout(_data(ctx))


def _section_files(ctx: StudyContext, section: str, image: bool) -> list[Path]:
    return _layout(ctx).section_files(section, image=image)


def _basis_pool(ctx: StudyContext) -> list[str]:
    sp = _sp(ctx)
    if not sp.n_components:
        return []
    return [s for s in sp.basis_sections or _layout(ctx).count_sections() if s not in set(sp.test_sections)]


def _scale_files(ctx: StudyContext) -> list[Path]:
    """Files `read_her2st` takes image scale from (present in the shared her2st folder)."""
    return _layout(ctx).scale_files()


# ---------------------------------------------------------------- train


def _folder(ctx: StudyContext, name: str, old: str) -> Path:
    """`<out>/<name>`, or the folder an older emo wrote under its former `spatial_` name."""
    path = ctx.out_dir / name
    return ctx.out_dir / old if not path.exists() and (ctx.out_dir / old).exists() else path


def model_dir(ctx: StudyContext) -> Path:
    return _folder(ctx, "spot_model", "spatial_model")


def run_train(ctx: StudyContext) -> None:
    import logging

    from emo.spot_models import train_spot_model

    sp = _sp(ctx)
    log = logging.getLogger(__name__)
    summary = []
    model = train_spot_model(_data(ctx), sp.train_sections, model_genes(ctx), sp.spot_model(),
                             exclude_from_basis=sp.test_sections, basis_sections=sp.basis_sections,
                             cache=_cache(ctx), on_done=summary.append)
    log.info("  %s", summary[0].line(model.save(model_dir(ctx))))


def train_inputs(ctx: StudyContext) -> list[Path]:
    sp = _sp(ctx)
    files = [f for s in sp.train_sections for f in _section_files(ctx, s, image=True)]
    files += [f for s in _basis_pool(ctx) if s not in sp.train_sections for f in _section_files(ctx, s, image=False)]
    genes_file = ctx.config.spot_genes_file()
    return files + _scale_files(ctx) + ([genes_file] if genes_file else [])


def train_params(ctx: StudyContext) -> dict[str, Any]:
    return _sp(ctx).model_dump(mode="json", exclude={"cache", "test_sections"}) | {"test_sections": _sp(ctx).test_sections}


# ---------------------------------------------------------------- predict


def predictions_dir(ctx: StudyContext) -> Path:
    return _folder(ctx, "spot_predictions", "spatial_predictions")


def run_predict(ctx: StudyContext) -> None:
    from emo.models import load
    from emo.spot_models import predict_section, write_spot_predictions

    model = load(model_dir(ctx))
    for s in _sp(ctx).test_sections:
        pred, measured = predict_section(model, _data(ctx), s, _cache(ctx))
        write_spot_predictions(predictions_dir(ctx), s, pred, measured, model_dir(ctx))


def predict_inputs(ctx: StudyContext) -> list[Path]:
    return [model_dir(ctx)] + [f for s in _sp(ctx).test_sections for f in _section_files(ctx, s, image=True)] + _scale_files(ctx)


# ---------------------------------------------------------------- evaluate


def evaluate_dir(ctx: StudyContext) -> Path:
    return _folder(ctx, "spot_evaluate", "spatial_evaluate")


def run_evaluate(ctx: StudyContext) -> None:
    """Per test section: per-gene Pearson r with BH-FDR (genes_<S>.csv), and a summary row (sections.csv)."""
    import pandas as pd

    from emo.expression import read_her2st
    from emo.io import write_json_atomic, write_table_atomic
    from emo.panels import get_panel
    from emo.spot_models import gene_correlations, score_spearman
    from emo.spot_models.targets import spot_targets

    genes, prolif = eval_genes(ctx), get_panel("pam50_proliferation")
    out = evaluate_dir(ctx)
    rows, tables = [], {}
    for s in _sp(ctx).test_sections:
        pred = pd.read_csv(predictions_dir(ctx) / f"{s}.csv", index_col=0)
        adata = read_her2st(_data(ctx), s)
        if list(pred.index) != list(adata.obs_names):
            raise EmoError(f"{predictions_dir(ctx) / f'{s}.csv'}: spot ids differ from section {s}; rerun with --from spot_predict")
        cols = list(pred.columns)
        measured = pd.DataFrame(spot_targets(adata, cols), index=adata.obs_names, columns=cols)
        table = gene_correlations(pred[genes].to_numpy(), measured[genes].to_numpy(), genes)
        rho, rho_p = score_spearman(pred, measured, [g for g in prolif if g in cols])
        write_table_atomic(out / f"genes_{s}.csv", table, index=False)
        expression_maps_png(predictions_dir(ctx) / f"{s}.h5ad", measured, pred, table, out / f"maps_{s}.png")
        tables[s] = table
        rows.append({"section": s, "n_spots": len(pred), "n_genes": len(genes), "mean_r": table.r.mean(),
                     "median_r": table.r.median(), "n_r_positive": int((table.r > 0).sum()),
                     "n_fdr05": int((table.fdr_bh < 0.05).sum()), "prolif_spearman": rho, "prolif_spearman_p": rho_p})
    summary = pd.DataFrame(rows)
    write_table_atomic(out / "sections.csv", summary, index=False)
    write_json_atomic(out / "summary.json", {"train_sections": _sp(ctx).train_sections, "sections": rows})
    _histogram(tables, out / "r_histogram.png")


def expression_maps_png(pred_h5ad: Path, measured: pd.DataFrame, pred: pd.DataFrame, table: pd.DataFrame,
                        path: Path, n_genes: int = 4) -> Path:
    """Measured (top row) and predicted (bottom row) expression of the best-predicted genes over the section's
    H&E, spot by spot; each panel has its own colour scale (predictions are shrunk towards the mean)."""
    import anndata
    import matplotlib.pyplot as plt

    from emo.io import save_figure
    from emo.prediction.render import expression_map

    adata = anndata.read_h5ad(pred_h5ad)
    (section,) = adata.uns["spatial"]
    lib, mpp = adata.uns["spatial"][section], float(adata.uns["emo_spatial"]["mpp"])
    genes = table.sort_values("r", ascending=False)["gene"].head(n_genes).tolist()
    r = table.set_index("gene")["r"]
    fig, axes = plt.subplots(2, len(genes), figsize=(4.2 * len(genes), 7.6), squeeze=False)
    for j, gene in enumerate(genes):
        for i, (what, frame) in enumerate((("measured", measured), ("predicted", pred))):
            expression_map(axes[i, j], lib, adata.obsm["spatial"], frame.loc[adata.obs_names, gene].to_numpy(),
                           square=False, mpp=mpp, label=f"{what} log1p expression",
                           title=f"{section} {what}: {gene}" + (f" (r = {r[gene]:.2f})" if i else ""))
    fig.tight_layout()
    return save_figure(fig, path, dpi=90, bbox_inches="tight")


def _histogram(tables: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    from emo.io import atomic_path

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for s, table in tables.items():
        ax.hist(table.r, bins=40, histtype="step", label=f"{s} (mean r {table.r.mean():.3f})")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(xlabel="Pearson r per gene over spots (held-out section)", ylabel="genes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def evaluate_inputs(ctx: StudyContext) -> list[Path]:
    files = [predictions_dir(ctx)] + [f for s in _sp(ctx).test_sections for f in _section_files(ctx, s, image=False)]
    genes_file = ctx.config.spot_genes_file()
    return files + ([genes_file] if genes_file else [])


def evaluate_params(ctx: StudyContext) -> dict[str, Any]:
    return {"genes": _sp(ctx).genes, "test_sections": _sp(ctx).test_sections}


def _run_report(ctx: StudyContext) -> None:
    from emo.reports import build_report

    build_report(ctx.out_dir, ctx.out_dir / "report.html")


SPOT_STAGES: tuple[Stage, ...] = (
    Stage(name="spot_train", run=run_train, inputs=train_inputs, params=train_params, outputs=lambda ctx: [model_dir(ctx)]),
    Stage(name="spot_predict", run=run_predict, inputs=predict_inputs,
          params=lambda ctx: {"test_sections": _sp(ctx).test_sections}, outputs=lambda ctx: [predictions_dir(ctx)],
          after=("spot_train",)),
    Stage(name="spot_evaluate", run=run_evaluate, inputs=evaluate_inputs, params=evaluate_params,
          outputs=lambda ctx: [evaluate_dir(ctx)], after=("spot_predict",)),
    Stage(name="report", run=_run_report, outputs=lambda ctx: [ctx.out_dir / "report.html"], after=("spot_evaluate",)),
)
