"""One model interface: every kind emo writes loads through `emo.models.load` and predicts a tile store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from training_cohort import cmu_tile_stores, write_targets

from emo.errors import EmoError
from emo.features import FeatureStore, embed, extract_features
from emo.features.config import ExtractionConfig
from emo.models import MODEL_KINDS, EmoModel, MLPConfig, load
from emo.slides import TileStore


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Five slides cut from the CMU H&E (8 tiles of 48 µm each), their features and slide targets."""
    root = tmp_path_factory.mktemp("registry")
    rng = np.random.default_rng(0)
    slides = cmu_tile_stores(root, 5, 8, rng, tile_ids=[f"{i}x{i % 3}" for i in range(8)])
    feature_dir = extract_features(root / "tiles", root / "features", ExtractionConfig(workers=0), progress=False)
    write_targets(root / "targets.h5ad", rng.normal(size=(5, 3)), ["ESR1", "MKI67", "ERBB2"], slides,
                  ["train", "train", "train", "tune", "tune"])
    return {"root": root, "tiles": root / "tiles", "features": feature_dir, "slides": slides}


def test_every_kind_emo_writes_is_registered():
    load  # noqa: B018 - the registry fills on first load; importing the kind modules does it too (as in timm)
    import emo.models.finetune_cnn  # noqa: F401
    import emo.models.paper_cnn  # noqa: F401
    import emo.models.spot  # noqa: F401
    import emo.models.tile_classifier  # noqa: F401

    assert {"ridge", "mlp", "attention_mil", "paper_cnn", "finetune_cnn", "tile_classifier", "spot_ridge"} <= set(MODEL_KINDS)
    assert all(issubclass(cls, EmoModel) for cls in MODEL_KINDS.values())


def test_a_subclass_registers_its_kind_and_loads_with_its_identity(tmp_path):
    from emo import __version__

    class Constant(EmoModel):
        kinds = ("test_constant",)

        def __init__(self, manifest, path=None):
            self.manifest, self.path = manifest, path

        @classmethod
        def from_folder(cls, model_dir, manifest):
            return cls(manifest, model_dir)

        def predict(self, source, embed=None):
            return np.full((len(source), 1), float(self.manifest["value"]), np.float32)

    try:
        assert MODEL_KINDS["test_constant"] is Constant
        folder = tmp_path / "m"
        folder.mkdir()
        manifest = {"kind": "test_constant", "emo_version": __version__, "genes": ["G"], "value": 2.0}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        (folder / "weights.safetensors").write_bytes(b"a")
        model = load(folder)
        assert isinstance(model, Constant) and model.kind == "test_constant" and model.genes == ["G"]
        assert model.predict(np.zeros((3, 4))).tolist() == [[2.0]] * 3
        first = model.model_id
        (folder / "weights.safetensors").write_bytes(b"bb")
        assert load(folder).model_id != first  # other weights, other identity
        with pytest.raises(EmoError, match="saved by the run that trains it"):
            model.save(tmp_path / "copy")
    finally:
        MODEL_KINDS.pop("test_constant", None)


@pytest.mark.parametrize("head", ["ridge", "mlp"])
def test_head_predicts_tile_store_like_its_features(stores, tmp_path, head):
    from emo.training import train_model

    out = train_model(stores["features"], stores["root"] / "targets.h5ad", tmp_path / head, head=head,
                      mlp_config=MLPConfig(hidden=8, max_epochs=3, patience=1, tiles_per_slide=4))
    model = load(out)
    assert model.kind == head and model.genes == ["ESR1", "MKI67", "ERBB2"]
    assert model.backbone["name"] == "efficientnet_lite0"
    tiles = TileStore(stores["tiles"] / "S0.h5")
    from_tiles = model.predict(tiles, embed)  # embedded in memory with the manifest's backbone
    with pytest.raises(EmoError, match="needs an embedder"):
        model.predict(tiles)
    from_store = model.predict(FeatureStore(stores["features"] / "S0.h5"))
    assert from_tiles.shape == (8, 3) and from_tiles.dtype == np.float32
    np.testing.assert_allclose(from_tiles, from_store, rtol=1e-4, atol=1e-5)


def test_tile_classifier_predicts_class_probabilities_of_a_tile_store(stores, tmp_path):
    from emo.models.tile_classifier import load_tile_classifier
    from emo.training.tile_classifier import train_tile_classifier

    labels = []
    for sid in stores["slides"]:
        path = stores["root"] / "labels" / f"{sid}_labeled_coordinates.tsv"
        path.parent.mkdir(exist_ok=True)
        ids = TileStore(stores["tiles"] / f"{sid}.h5").tile_ids
        path.write_text("x\ty\tlabel\n" + "".join(f"{t.split('x')[0]}\t{t.split('x')[1]}\t{'a' if i % 2 else 'b'}\n"
                                                 for i, t in enumerate(ids)))
        labels.append(path)
    train_tile_classifier(stores["features"], labels, tmp_path / "clf", min_count=2)
    model = load(tmp_path / "clf")
    assert model.kind == "tile_classifier" and model.genes == ["a", "b"]
    proba = model.predict(TileStore(stores["tiles"] / "S1.h5"), embed)
    assert proba.shape == (8, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(proba, load_tile_classifier(tmp_path / "clf").predict_proba(
        FeatureStore(stores["features"] / "S1.h5").features), rtol=1e-4, atol=1e-6)


def test_paper_cnn_predicts_tile_pixels_and_refuses_features(stores, tmp_path):
    from emo.models.paper_cnn import load_gene_model
    from emo.training.paper import PaperProtocolConfig, train_paper_protocol

    config = PaperProtocolConfig(backbone="timm:resnet10t", weights="none", input_size=75, max_epochs=1,
                                 steps_per_epoch=1, tuning_batches=1, batch_size=4, keep_best=1, keep_random=0)
    train_paper_protocol(stores["tiles"], stores["root"] / "targets.h5ad", tmp_path / "paper", "ESR1", config)
    model = load(tmp_path / "paper")
    assert model.kind == "paper_cnn" and model.genes == ["ESR1"]
    tiles = TileStore(stores["tiles"] / "S2.h5")
    pred = model.predict(tiles)
    import torch

    from emo.models.inputs import to_model_input

    net = load_gene_model(tmp_path / "paper", "ESR1")
    with torch.no_grad():
        ref = net(to_model_input(tiles.read_tiles(np.arange(len(tiles))), 75, net[0].mean, net[0].std)).numpy()
    np.testing.assert_allclose(pred, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(EmoError, match="reads tile pixels; pass a tile store"):
        model.predict(np.zeros((2, 8), np.float32))


def _spot_model(stores, tmp_path, meta=None):
    """A spot model fitted for real on the tile stores' multi-scale features (random spot targets)."""
    from emo.spot_models import SpotModelConfig, fit_spot_model
    from emo.models.spot import section_design

    config = SpotModelConfig(tile_sizes_um=(48.0, 96.0), backbone="efficientnet_lite0", n_components=None,
                             context_radius=1.5)
    rng = np.random.default_rng(1)
    designs, targets = [], []
    for sid in stores["slides"][:3]:
        store = TileStore(stores["tiles"] / f"{sid}.h5")
        centres_um = (np.asarray(store.coords_px) + store.attrs["tile_size_level0"] / 2) * store.mpp
        designs.append(section_design(_stored_features(store, config, tmp_path), centres_um, config, 300.0))
        targets.append(rng.normal(size=(len(store), 2)))
    meta = {"train_sections": ["S0", "S1", "S2"], "basis_sections": [], "spot_pitch_um": 200.0,
            "context_radius_um": 300.0, **(meta or {})}
    model = fit_spot_model(designs, targets, ["ESR1", "MKI67"], config, meta=meta)
    model.save(tmp_path / "spot")
    return model, config


def _stored_features(store, config, cache):
    """The features stage's way: a spot-centred tile store per scale (slides stage) and its feature store."""
    from emo.spot_models.sections import centred_tile_store

    centres = np.asarray(store.coords_px, np.float64) + float(store.attrs["tile_size_level0"]) / 2
    parts = []
    for size in config.tile_sizes_um:
        tiles = centred_tile_store(store.slide_path, centres, store.mpp, store.tile_ids, size, config.tile_px, cache,
                                   store.slide_id)
        folder = extract_features(tiles, tiles.parents[1] / "features", ExtractionConfig(backbone=config.backbone, workers=0),
                                  progress=False)
        parts.append(FeatureStore(next(folder.glob("*.h5"))).features)
    return np.concatenate(parts, axis=1)


def test_spot_model_predicts_any_tile_store_in_memory_like_the_cached_stores(stores, tmp_path, monkeypatch):
    import tempfile

    from emo.models.spot import section_design

    fitted, config = _spot_model(stores, tmp_path)
    model = load(tmp_path / "spot")
    assert model.kind == "spot_ridge" and model.genes == ["ESR1", "MKI67"]
    assert model.backbone["tile_sizes_um"] == [48.0, 96.0]
    assert json.loads((tmp_path / "spot" / "manifest.json").read_text())["context_radius_um"] == 300.0
    store = TileStore(stores["tiles"] / "S4.h5")  # a slide it never saw; no counts, no spot grid
    view = store.centred_view(96.0, 224)
    assert len(view) == len(store) and view.read_tiles([0]).shape == (1, 224, 224, 3)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    pred = model.predict(store, embed)  # pixels read through the store's reader: nothing written
    centres_um = (np.asarray(store.coords_px) + store.attrs["tile_size_level0"] / 2) * store.mpp
    ref = fitted.predict_design(section_design(_stored_features(store, config, tmp_path / "c"), centres_um,
                                               config, 300.0))
    assert pred.shape == (8, 2)
    np.testing.assert_allclose(pred, ref, rtol=1e-5, atol=1e-5)  # the same pixels as the stored tiles
    with pytest.raises(EmoError, match="reads tile pixels; pass a tile store"):
        model.predict(np.zeros((8, 10), np.float32))

    # the same model through `emo predict --tiles`: EMO-spatial per slide and EMO-average, every gene
    import anndata

    from emo.prediction import predict

    predict(tmp_path / "spot", None, tmp_path / "pred", tiles=stores["tiles"])
    spatial = anndata.read_h5ad(tmp_path / "pred" / "spatial" / "S4.h5ad")
    assert list(spatial.var_names) == ["ESR1", "MKI67"] and list(spatial.obs_names) == list(store.tile_ids)
    np.testing.assert_allclose(spatial.X, pred, rtol=1e-5, atol=1e-5)
    assert anndata.read_h5ad(tmp_path / "pred" / "average.h5ad").shape == (5, 2)
    assert list(temp.iterdir()) == []


def test_spot_predictions_refuse_leaking_sections(stores, tmp_path, caplog):
    from emo.spot_models.sections import check_held_out, predict_section

    model, _ = _spot_model(stores, tmp_path, {"train_sections": ["B4"], "basis_sections": ["B4", "C4"]})
    with pytest.raises(EmoError, match="C4: its counts shaped the model's target components"):
        predict_section(model, tmp_path, "C4")
    with pytest.raises(EmoError, match="sections B4: both training and predicted sections"):
        predict_section(model, tmp_path, "B4")
    with pytest.raises(EmoError, match="sections C3: both training and held-out"):
        check_held_out(["B4", "C3"], ["C3"])
    caplog.clear()
    check_held_out(["B4", "C2", "C3"], ["C4"])
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "patient C: train C2,C3 vs held-out C4: training and held-out sections of one patient; scores may be optimistic"]
    caplog.clear()
    check_held_out(["B4"], ["C4"])  # other patients: no warning
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_unknown_kind_and_unknown_spot_genes_are_errors(tmp_path):
    import anndata
    from scipy import sparse

    from emo.spot_models.targets import spot_targets

    (tmp_path / "m").mkdir()
    from emo import __version__

    (tmp_path / "m" / "manifest.json").write_text(json.dumps({"kind": "nope", "emo_version": __version__}))
    with pytest.raises(EmoError, match="unknown model kind 'nope'; this emo loads .*spot_ridge"):
        load(tmp_path / "m")
    adata = anndata.AnnData(X=sparse.csr_matrix(np.ones((3, 2), np.float32)),
                            var={"gene": ["ESR1", "MKI67"]}, uns={"emo_spatial": {"section_id": "C4"}})
    adata.var_names = ["ESR1", "MKI67"]
    assert spot_targets(adata, ["MKI67"]).shape == (3, 1)
    with pytest.raises(EmoError, match="section C4: 2 gene\\(s\\) not measured: NOPE1, NOPE2"):
        spot_targets(adata, ["ESR1", "NOPE1", "NOPE2"])


def test_her2st_section_without_counts_reads_from_spots(shared_data, tmp_path):
    from emo.expression import read_her2st
    from emo.expression.her2st import Her2stLayout

    data = shared_data("her2st")
    shared_data("her2st/images/C4.jpg")
    src, dst = Her2stLayout(data), Her2stLayout(tmp_path / "her2st")
    for path in (dst.spots("C4"), dst.full_image("C4")):
        path.parent.mkdir(parents=True, exist_ok=True)
    dst.spots("C4").symlink_to(src.spots("C4"))
    dst.full_image("C4").symlink_to(src.full_image("C4"))
    with pytest.raises(EmoError, match="counts/C4.tsv.gz: not found"):
        read_her2st(dst.root, "C4")
    adata = read_her2st(dst.root, "C4", require_counts=False)
    n_spots = len(src.spots("C4").read_text().strip().splitlines()) - 1
    assert adata.n_obs == n_spots and adata.n_vars == 0 and not adata.uns["emo_spatial"]["has_counts"]
    with_counts = read_her2st(data, "C4")
    np.testing.assert_array_equal(adata[with_counts.obs_names].obsm["spatial"], with_counts.obsm["spatial"])
