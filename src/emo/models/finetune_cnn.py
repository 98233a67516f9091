"""A fine-tuned network for all genes at once (kind `finetune_cnn`, fitted by `emo.training.finetune`,
at slide, tile or spot level); it reads tile pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emo.errors import EmoError
from emo.models.inputs import to_model_input
from emo.models.registry import EmoModel

KIND = "finetune_cnn"


def finetune_net(backbone_name: str, weights: str, input_size: int, seed: int, n_genes: int, n_out: int):
    """The backbone with a linear head on `n_out` target scores and buffers mapping them back to genes."""
    import torch
    from torch import nn

    from emo.models.backbones import create_backbone

    torch.manual_seed(seed)
    backbone = create_backbone(backbone_name, weights, input_size=input_size)

    class FinetuneNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.head = nn.Linear(backbone.dim, n_out)
            self.register_buffer("y_mean", torch.zeros(n_genes))
            self.register_buffer("y_std", torch.ones(n_genes))
            self.register_buffer("basis", torch.eye(n_genes, n_out))

        def forward(self, x):  # standardised target scores
            return self.head(self.backbone(x))

        def expression(self, x):
            return (self(x) @ self.basis.T) * self.y_std + self.y_mean

    return FinetuneNet()


class FinetuneModel(EmoModel):
    """The selected checkpoint of a fine-tuned network; `predict_tiles` gives every gene at once.
    Behind `emo.models.load` (kind `finetune_cnn`) it reads pixels: `predict` takes a tile store."""

    kinds = (KIND,)

    @classmethod
    def from_folder(cls, model_dir: Path, manifest: dict) -> FinetuneModel:
        return _load(model_dir, manifest)
    reads_pixels = True

    def __init__(self, manifest: dict, net, device: str, path: Path):
        self.manifest, self.net, self.device, self.path = manifest, net, device, path

    @property
    def backbone(self) -> dict:
        return dict(self.manifest["backbone"])

    def predict_tiles(self, tiles: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 [k, H, W, 3] tiles → float32 [k, genes]."""
        import torch


        b = self.net.backbone
        out = []
        with torch.inference_mode():
            for s in range(0, len(tiles), batch_size):
                x = to_model_input(tiles[s : s + batch_size], b.input_size, b.mean, b.std).to(self.device)
                out.append(self.net.expression(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.genes)), np.float32)

    def predict(self, source, embed=None, batch_size: int = 64) -> np.ndarray:
        """float32 [tiles, genes] for every tile of a tile store."""
        self.pixels_only(source)
        out = [self.predict_tiles(tiles, batch_size) for _, tiles in source.iter_batches(batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.genes)), np.float32)

    def predict_section(self, section) -> np.ndarray:
        """Every spot of one section (`emo.spot_models.SpotSection`) from its spot-centred tiles at the
        training tile size."""
        size_um = float(self.manifest["tile_geometry"]["tile_size_um"])
        return self.predict(section.tiles(size_um, int(self.manifest["protocol"]["input_size"])))


def _load(model_dir: Path, manifest: dict) -> FinetuneModel:
    return load_finetune_model(model_dir)


def load_finetune_model(model_dir: Path) -> FinetuneModel:
    """Rebuild the network (no download: random init, then the kept checkpoint's weights)."""
    import torch
    from safetensors.torch import load_file

    from emo.models.model import read_manifest

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if manifest.get("kind") != KIND:
        raise EmoError(f"{model_dir}: kind={manifest.get('kind')!r} is not a fine-tuned network ({KIND})")
    done = model_dir / "done.json"
    if not done.exists():
        raise EmoError(f"{model_dir}: fine-tuning has not finished; re-run `emo train --protocol finetune`")
    protocol = manifest["protocol"]
    state = load_file(str(model_dir / json.loads(done.read_text())["best_checkpoint"]))
    net = finetune_net(protocol["backbone"], "none", int(protocol["input_size"]), int(protocol["seed"]),
                       state["y_mean"].shape[0], state["basis"].shape[1])
    net.load_state_dict(state)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return FinetuneModel(manifest, net.to(device).eval(), device, model_dir)
