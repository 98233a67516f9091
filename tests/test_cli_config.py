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
    """The options `emo COMMAND ARGS` parses to (click's own parser, nothing run)."""
    cmd = typer.main.get_command(app).get_command(None, command)
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
