"""Scale-out of the two embarrassingly parallel loops through the executor registry: tiling (slides)
and the paper protocol (genes) give identical artifacts on the local pool, a local Ray cluster and a
real single-node SLURM; a failing slide or gene is reported while the others finish.
"""

from __future__ import annotations

import json
import os
import subprocess

import h5py
import numpy as np
import pandas as pd
import pytest
from test_executors import ray_executor, slurm_folder  # noqa: F401  (fixtures: module Ray cluster, SLURM or skip)
from training_cohort import cmu_tile_stores, write_targets

from emo.errors import EmoError
from emo.slides import TilingConfig, tile_slides
from emo.training.paper import PaperProtocolConfig, train_paper_protocol

pytestmark = pytest.mark.slow  # tiling and features through Ray/SLURM executors


TILING = TilingConfig(tile_size_um=100, target_mpp=2.0, normalize=True)
PROTOCOL = PaperProtocolConfig(
    backbone="timm:resnet10t", weights="none", input_size=75, batch_size=4, steps_per_epoch=2, tuning_batches=1,
    max_epochs=2, min_delta=0.0, patience=5, keep_best=1, keep_random=1, lr=1e-4,
)


def _partition() -> str:
    return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True).stdout.split()[0].rstrip("*")


# ---------------------------------------------------------------- isolation of crashes


def fail_or_die(item: tuple[str, str]) -> str:
    """Counts its attempts; `bad` raises, `die` kills its worker, the others succeed."""
    kind, folder = item
    with open(f"{folder}/{kind}.attempts", "a") as f:
        f.write(".")
    if kind.startswith("bad"):
        raise ValueError(f"{kind} is broken")
    if kind == "die":
        os._exit(1)
    return kind


def test_only_crashes_are_isolated_and_exceptions_are_not_rerun(tmp_path):
    from emo.executors import get_executor, map_isolated

    kinds = ["ok1", "bad1", "die", "ok2"]
    with get_executor("local", workers=2, retries=1, progress=False) as executor:
        results, failures = map_isolated(executor, fail_or_die, [(k, str(tmp_path)) for k in kinds], desc="x")
        assert results[0] == "ok1" and results[3] == "ok2"  # finished despite the crash beside them
        assert sorted(failures) == [1, 2] and failures[1].startswith("ValueError: bad1 is broken")
        assert failures[2].startswith("worker crashed: ")
        assert len((tmp_path / "die.attempts").read_text()) >= 2  # retried (and alone if others crashed with it)
        # exceptions raised by fn: one try + one retry each, never re-run in isolation
        (tmp_path / "x").mkdir()
        results, failures = map_isolated(executor, fail_or_die, [(k, str(tmp_path / "x")) for k in ("bad2", "bad3")], desc="x")
    assert results == [None, None] and sorted(failures) == [0, 1]
    assert [len((tmp_path / "x" / f"{k}.attempts").read_text()) for k in ("bad2", "bad3")] == [2, 2]


# ---------------------------------------------------------------- slides


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    from conftest import require_data

    svs = require_data("slides/CMU-1-Small-Region.svs")
    root = tmp_path_factory.mktemp("slides")
    paths = []
    for name in ("A", "B"):
        paths.append(root / f"{name}.svs")
        paths[-1].symlink_to(svs)
    paths.append(root / "broken.svs")
    paths[-1].write_bytes(b"not a slide")
    return paths


@pytest.fixture(scope="module")
def tiled_locally(slides, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiles-local")
    return out, tile_slides(slides, out / "tiles", TILING, workers=2)


def _store_content(path):
    """Every dataset and attribute of a tile store except its creation time."""
    with h5py.File(path, "r") as f:
        data = {k: f[k][...] for k in f}
        attrs = {k: v for k, v in f.attrs.items() if k not in ("created",)}
    return data, attrs


def _check_same_tiles(reference, summary, out):
    ref_out, ref_summary = reference
    cols = ["slide_id", "status", "n_kept", "n_dropped_tissue", "n_dropped_sharpness", "level"]
    pd.testing.assert_frame_equal(summary[cols], ref_summary[cols])
    assert list(summary["status"]) == ["ok", "ok", "failed"] and "broken.svs" in summary["error"].iloc[2]
    for sid in ("A", "B"):
        (a_data, a_attrs), (b_data, b_attrs) = _store_content(ref_out / "tiles" / f"{sid}.h5"), _store_content(out / "tiles" / f"{sid}.h5")
        assert a_data.keys() == b_data.keys() and len(a_data["coords_px"]) > 20
        for key in a_data:
            np.testing.assert_array_equal(a_data[key], b_data[key], err_msg=key)
        assert a_attrs.keys() == b_attrs.keys()
        for key in a_attrs:
            if key != "slide_path":
                np.testing.assert_array_equal(a_attrs[key], b_attrs[key], err_msg=key)


def test_tiling_on_ray_gives_the_local_tile_stores(slides, tiled_locally, ray_executor, tmp_path):  # noqa: F811
    summary = tile_slides(slides, tmp_path / "tiles", TILING, executor=ray_executor)
    _check_same_tiles(tiled_locally, summary, tmp_path)
    assert pd.read_csv(tmp_path / "tiles" / "summary.csv")["status"].tolist() == ["ok", "ok", "failed"]


def test_tiling_on_slurm_gives_the_local_tile_stores(slides, tiled_locally, slurm_folder, tmp_path):  # noqa: F811
    options = {"partition": _partition(), "time_min": 5, "mem_gb": 1, "poll_s": 0.3, "chunk_size": 2, "progress": False}
    summary = tile_slides(slides, tmp_path / "tiles", TILING, executor="slurm", executor_options=options)
    _check_same_tiles(tiled_locally, summary, tmp_path)
    assert len(list((tmp_path / "tiles" / ".slurm").glob("*_submission.sh"))) == 1  # one job array


def test_tile_cli_takes_an_executor(slides, tiled_locally, tmp_path):
    import sys

    res = subprocess.run([sys.executable, "-m", "emo", "tile", *map(str, slides[:2]), "--out", str(tmp_path),
                          "--tile-um", "100", "--target-mpp", "2", "--executor", "local", "--workers", "2"],
                         capture_output=True, text=True, env=os.environ)
    assert res.returncode == 0, res.stderr[-2000:]
    for sid in ("A", "B"):
        np.testing.assert_array_equal(_store_content(tmp_path / "tiles" / f"{sid}.h5")[0]["coords_px"],
                                      _store_content(tiled_locally[0] / "tiles" / f"{sid}.h5")[0]["coords_px"])
    res = subprocess.run([sys.executable, "-m", "emo", "tile", str(slides[0]), "--out", str(tmp_path / "x"),
                          "--executor", "dask"], capture_output=True, text=True, env=os.environ)
    assert res.returncode == 2 and "unknown; choose one of local, ray, slurm" in res.stderr


# ---------------------------------------------------------------- genes


@pytest.fixture(scope="module")
def paper_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    rng = np.random.default_rng(0)
    slide_ids = cmu_tile_stores(root, 4, 5, rng)
    y = rng.normal(size=(4, 3))
    y[:, 2] = np.nan  # a gene without a single measurement
    write_targets(root / "targets.h5ad", y, ["ESR1", "MKI67", "BROKEN"], slide_ids, ["train", "train", "tune", "tune"])
    return root


def _train(paper_inputs, out, genes="ESR1,MKI67", **kwargs):
    return train_paper_protocol(paper_inputs / "tiles", paper_inputs / "targets.h5ad", out, genes, PROTOCOL, **kwargs)


def _gene_outputs(model_dir, genes=("ESR1", "MKI67")):
    """Per gene: done.json, the tuning/training losses and every kept checkpoint's tensors."""
    from safetensors.numpy import load_file

    out = {}
    for gene in genes:
        folder = model_dir / "genes" / gene
        out[gene] = (
            json.loads((folder / "done.json").read_text()),
            pd.read_csv(folder / "history.csv"),
            {p.name: load_file(p) for p in sorted(folder.glob("epoch_*.safetensors"))},
        )
    return out


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for gene in a:
        (done_a, hist_a, ckpt_a), (done_b, hist_b, ckpt_b) = a[gene], b[gene]
        assert done_a == done_b  # same selected checkpoint, same best tuning loss (exact float)
        pd.testing.assert_frame_equal(hist_a, hist_b, check_exact=True)
        assert ckpt_a.keys() == ckpt_b.keys() and len(ckpt_a) >= 1
        for name in ckpt_a:
            for key in ckpt_a[name]:
                np.testing.assert_array_equal(ckpt_a[name][key], ckpt_b[name][key], err_msg=f"{gene} {name} {key}")


@pytest.fixture(scope="module")
def trained_locally(paper_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper-local") / "model"
    _train(paper_inputs, out)  # in process
    return _gene_outputs(out)


def test_paper_protocol_is_reproducible_in_process_and_in_a_pool(paper_inputs, trained_locally, tmp_path):
    _train(paper_inputs, tmp_path / "model", workers=2)
    _assert_identical(trained_locally, _gene_outputs(tmp_path / "model"))
    hist = trained_locally["ESR1"][1]
    assert len(hist) == 2 and hist["tune_loss"].nunique() == 2  # it trained: the loss moved
    # the two genes differ only in their labels, so their training runs differ
    assert not trained_locally["ESR1"][1]["tune_loss"].equals(trained_locally["MKI67"][1]["tune_loss"])


def test_paper_protocol_on_ray_matches_local(paper_inputs, trained_locally, ray_executor, tmp_path):  # noqa: F811
    _train(paper_inputs, tmp_path / "model", executor=ray_executor)
    _assert_identical(trained_locally, _gene_outputs(tmp_path / "model"))
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["genes"] == ["ESR1", "MKI67"] and manifest["failed_genes"] == {}


def test_paper_protocol_on_slurm_matches_local(paper_inputs, trained_locally, slurm_folder, tmp_path):  # noqa: F811
    options = {"partition": _partition(), "time_min": 5, "mem_gb": 2, "poll_s": 0.3, "progress": False}
    _train(paper_inputs, tmp_path / "model", executor="slurm", executor_options=options)
    _assert_identical(trained_locally, _gene_outputs(tmp_path / "model"))
    (script,) = (tmp_path / "model" / ".slurm").glob("*_submission.sh")
    assert "--array=0-1" in script.read_text()  # one array task per gene


def test_failing_gene_is_reported_while_the_others_finish(paper_inputs, trained_locally, tmp_path):
    out = tmp_path / "model"
    with pytest.raises(EmoError) as info:
        _train(paper_inputs, out, genes="ESR1,BROKEN", workers=2)
    message = str(info.value)
    assert "1 of 2 gene(s) failed" in message and "BROKEN" in message and "all NaN" in message
    assert "\n" not in message
    assert not (out / "genes" / "BROKEN" / "done.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["genes"] == ["ESR1"] and list(manifest["failed_genes"]) == ["BROKEN"]
    _assert_identical({"ESR1": trained_locally["ESR1"]}, _gene_outputs(out, ["ESR1"]))
    # a re-run without the broken gene skips the finished one and completes
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "genes" / "ESR1").iterdir()}
    _train(paper_inputs, out, genes="ESR1")
    assert {p.name: p.stat().st_mtime_ns for p in (out / "genes" / "ESR1").iterdir()} == stamp
    assert json.loads((out / "manifest.json").read_text())["failed_genes"] == {}


# ---------------------------------------------------------------- features


FEATURES = dict(backbone="timm:resnet10t", weights="none", input_size=64, batch_size=32, workers=0)


def _features(folder):
    from emo.features import FeatureStore

    return {p.stem: FeatureStore(p).features for p in sorted(folder.glob("*.h5"))}


def test_features_fan_out_over_ray_in_slide_jobs(tiled_locally, ray_executor, tmp_path):  # noqa: F811
    from emo.features import extract_features
    from emo.features.config import ExtractionConfig

    tiles = tiled_locally[0] / "tiles"
    local = _features(extract_features(tiles, tmp_path / "local", ExtractionConfig(**FEATURES), progress=False))
    seen = []
    folder = extract_features(tiles, tmp_path / "ray", ExtractionConfig(**FEATURES, slides_per_job=1), executor=ray_executor,
                              progress=False, on_slide_done=lambda sid, path, status: seen.append((sid, status)))
    assert sorted(seen) == [("A", "computed"), ("B", "computed")]
    ray = _features(folder)
    assert local.keys() == ray.keys() == {"A", "B"}
    for sid in local:
        np.testing.assert_array_equal(local[sid], ray[sid])
    seen.clear()  # finished slides are not sent out again
    extract_features(tiles, tmp_path / "ray", ExtractionConfig(**FEATURES), executor=ray_executor, progress=False,
                     on_slide_done=lambda s, p, st: seen.append(st))
    assert seen == ["cached", "cached"]
