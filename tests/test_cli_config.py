"""The CLI and a study file build equal config objects, and the CLI answers without importing torch."""

from __future__ import annotations

import subprocess
import sys

import typer

from emo.cli import app
from emo.cli.features import extraction_config
from emo.cli.tile import tiling_config
from emo.cli.train import train_config
from emo.run import parse_study


def _params(command: str, args: list[str]) -> dict:
    """The options `emo COMMAND ARGS` parses to (click's own parser, nothing run); COMMAND may name a
    subcommand, e.g. "analyze de"."""
    cmd = typer.main.get_command(app)
    for name in command.split():
        cmd = cmd.get_command(None, name)
    return cmd.make_context(command, list(args)).params  # click consumes the list it parses


def test_import_emo_cli_does_not_import_torch():
    code = "import sys, emo.cli; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_tile_cli_and_study_build_the_same_config(tmp_path):
    p = _params("tile", ["s.svs", "--out", "o", "--tile-um", "128", "--min-tissue", "0.3", "--roi-classes", "Tumor, Stroma",
                         "--no-normalize"])
    study = parse_study({"slides": {"tile_size_um": 128, "min_tissue": 0.3, "roi_classes": ["Tumor", "Stroma"],
                                    "normalize": False}}, base_dir=tmp_path)
    assert tiling_config(p) == study.slides.tiling(study.path)
    assert tiling_config(_params("tile", ["s.svs", "--out", "o"])) == parse_study({}).slides.tiling(study.path)


def test_features_cli_and_study_build_the_same_config():
    p = _params("features", ["tiles", "--out", "o", "--backbone", "resnet18", "--batch-size", "8", "--workers", "0"])
    assert extraction_config(p) == parse_study({"features": {"backbone": "resnet18", "batch_size": 8, "workers": 0}}).features
    assert extraction_config(_params("features", ["tiles", "--out", "o"])) == parse_study({}).features


def test_train_cli_and_study_build_the_same_config_for_each_protocol():
    base = ["--out", "m", "--targets", "t.h5ad"]
    assert train_config(_params("train", base)) == parse_study({}).training
    mlp = train_config(_params("train", [*base, "--head", "mlp", "--seed", "3", "--genes", "pam50"]))
    assert mlp == parse_study({"training": {"head": "mlp", "seed": 3, "genes": "pam50"}}).training
    tuned = train_config(_params("train", [*base, "--protocol", "finetune", "--max-epochs", "2", "--components", "4"]))
    study = parse_study({"training": {"protocol": "finetune", "finetune": {"max_epochs": 2, "n_components": 4}}}).training
    assert tuned == study and tuned.finetune_config().n_components == 4 and tuned.reads_tiles


def test_expression_cli_and_study_build_the_same_config():
    from emo.cli.expression import prepare_config

    base = ["--samples", "s.csv", "--reference-cohort", "TCGA", "--matrix", "m.tsv", "--out", "t.h5ad"]
    p = _params("expression prepare", [*base, "--fractions", "50,20,10,20", "--external-cohort", "EXT", "--seed", "4",
                               "--on-duplicate", "first"])
    study = parse_study({"expression": {"reference_cohort": "TCGA", "fractions": [0.5, 0.2, 0.1, 0.2], "seed": 4,
                                        "external_cohorts": ["EXT"], "on_duplicate": "first"}})
    assert prepare_config(p) == study.expression.prepare()
    # the CLI's default percentages are the paper's fractions the study uses
    default = prepare_config(_params("expression prepare", [*base]))
    assert default == parse_study({"expression": {"reference_cohort": "TCGA"}}).expression.prepare()


def test_predict_cli_and_study_build_the_same_config():
    from emo.cli.predict import prediction_config

    base = ["--model", "m", "--out", "o"]
    p = _params("predict", [*base, "--panel", "pam50", "--classes", "cohort", "--geojson-top", "0", "--chunk-tiles", "64"])
    study = parse_study({"prediction": {"panel": "pam50", "classes": "cohort", "geojson_top": 0, "chunk_tiles": 64}})
    assert prediction_config(p) == study.prediction
    assert prediction_config(_params("predict", base)) == parse_study({}).prediction


def test_evaluate_cli_and_study_build_the_same_rules():
    from emo.analysis.config import EvaluateConfig
    from emo.cli.evaluate import evaluate_config

    base = ["--predictions", "a.h5ad", "--targets", "t.h5ad", "--split", "validation", "--out", "o"]
    p = _params("evaluate", [*base, "--r2-min", "0.3", "--cohort", "TCGA", "--r2-report", "0.5", "--no-figures"])
    study = parse_study({"evaluation": {"thresholds": {"r2_min": 0.3, "cohorts": ["TCGA"], "r2_report": [0.5],
                                                       "figures": False}}})
    assert evaluate_config(p) == EvaluateConfig(**study.evaluation.thresholds.model_dump())
    assert evaluate_config(_params("evaluate", base)) == EvaluateConfig(**parse_study({}).evaluation.thresholds.model_dump())


def test_analyze_clis_and_study_build_the_same_configs():
    from emo.cli.analyze_bulk import clusters_config, de_config, enrich_config

    def analyze(name, args):
        return _params(f"analyze {name}", ["--out", "o", *args])

    study = parse_study({"analyses": {
        "clusters": {"k": 3, "n_iter": 20, "orientation": "genes"},
        "differential_expression": {"contrast": "her2_status", "covariates": ["age"]},
        "enrich": {"score": "rho", "permutations": 50}}}).analyses
    assert clusters_config(analyze("clusters", ["--measured", "m", "--k", "3", "--iterations", "20", "--orient", "genes"])) == study.clusters
    assert de_config(analyze("de", ["--measured", "m", "--contrast", "her2_status", "--covariates", "age"])) == study.differential_expression
    assert enrich_config(analyze("enrich", ["--ranking", "g.csv", "--gene-sets", "h.gmt", "--score", "rho",
                                            "--permutations", "50"])) == study.enrich
    defaults = parse_study({"analyses": {"clusters": {}, "differential_expression": {}, "enrich": {}}}).analyses
    assert clusters_config(analyze("clusters", ["--measured", "m"])) == defaults.clusters
    assert de_config(analyze("de", ["--measured", "m"])) == defaults.differential_expression
    assert enrich_config(analyze("enrich", ["--ranking", "g.csv", "--gene-sets", "h.gmt"])) == defaults.enrich


def test_spatial_train_cli_and_spot_study_build_the_same_config(tmp_path):
    from emo.cli.spatial import spot_model_config

    base = ["--data", "d", "--sections", "A1", "--genes", "ERBB2", "--out", "m"]
    spots = {"data_dir": "d", "train_sections": ["A1"], "test_sections": ["B1"], "genes": "ERBB2"}
    p = _params("spatial train", [*base, "--tile-sizes-um", "224,448", "--components", "0", "--no-section-standardize"])
    study = parse_study({"spots": {**spots, "tile_sizes_um": [224, 448], "n_components": 0, "section_standardize": False}},
                        base_dir=tmp_path)
    assert spot_model_config(p) == study.spots.spot_model() and spot_model_config(p).n_components is None
    assert spot_model_config(_params("spatial train", base)) == parse_study({"spots": spots}, base_dir=tmp_path).spots.spot_model()
