"""The paper's model (kind `paper_cnn`, Wang, Kartasalo et al. 2021): one CNN per gene, each the
lowest-tuning-loss checkpoint `emo.training.paper` kept; it reads tile pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emo.errors import EmoError
from emo.models.inputs import to_model_input
from emo.models.registry import EmoModel


def paper_cnn(backbone: str, weights: str, seed: int):
    """(network, backbone): the backbone with one linear output, initialised from `seed`."""
    import torch
    from torch import nn

    from emo.models.backbones import create_backbone

    torch.manual_seed(seed)
    net = create_backbone(backbone, weights)
    return nn.Sequential(net, nn.Linear(net.dim, 1)), net


def load_gene_model(model_dir: Path, gene: str):
    """The lowest-tuning-loss checkpoint of one gene as an eval-mode torch module."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    done = model_dir / "genes" / gene / "done.json"
    if not done.exists():
        raise EmoError(f"{model_dir}: gene {gene} has no finished model; re-run `emo train --protocol paper`")
    info = json.loads(done.read_text())
    protocol = manifest["protocol"]
    model, _ = paper_cnn(protocol["backbone"], "none", int(protocol["seed"]))
    model.load_state_dict(load_file(str(model_dir / "genes" / gene / info["best_checkpoint"])))
    return model.eval()


class PaperModel(EmoModel):
    """All genes' selected CNNs; `predict_tiles` runs each on the same tiles (EMO-spatial per gene).
    Behind `emo.models.load` (kind `paper_cnn`) it reads pixels: `predict` takes a tile store."""

    kinds = ("paper_cnn",)

    @classmethod
    def from_folder(cls, model_dir: Path, manifest: dict) -> PaperModel:
        return _load_paper_model(model_dir, manifest)
    reads_pixels = True

    def __init__(self, manifest: dict, nets: list, input_size: int, mean, std, device: str, path: Path | None = None):
        self.manifest, self.nets, self.device, self.path = manifest, nets, device, path
        self.input_size, self.mean, self.std = input_size, tuple(mean), tuple(std)

    @property
    def backbone(self) -> dict:
        """Its own network (one per gene), not cached features."""
        p = self.manifest["protocol"]
        return {"name": p["backbone"], "input_size": int(p["input_size"]), "mean": list(self.mean), "std": list(self.std)}

    def predict_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 [k, H, W, 3] tiles → float32 [k, genes]."""
        import torch


        x = to_model_input(tiles, self.input_size, self.mean, self.std).to(self.device)
        with torch.inference_mode():
            return torch.cat([net(x) for net in self.nets], dim=1).float().cpu().numpy()

    def predict(self, source, embed=None, batch_size: int = 64) -> np.ndarray:
        """float32 [tiles, genes] for every tile of a tile store."""
        self.pixels_only(source)
        out = [self.predict_tiles(tiles) for _, tiles in source.iter_batches(batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.genes)), np.float32)


def _load_paper_model(model_dir: Path, manifest: dict) -> PaperModel:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    nets = [load_gene_model(model_dir, g).to(device) for g in manifest["genes"]]
    backbone = nets[0][0]
    return PaperModel(manifest, nets, int(manifest["protocol"]["input_size"]), backbone.mean, backbone.std, device,
                      Path(model_dir))
