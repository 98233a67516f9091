"""Gated-attention multiple-instance head (Ilse et al. 2018), one output per gene.

A slide (or region) is a bag of tile features. Each tile gets an embedding h, an instance
prediction s(h) for every gene and an attention score from the gated branch
w·(tanh(V h) ⊙ sigmoid(U h)); the slide prediction is Σ softmax(score)_i s_i, so tiles that look
informative weigh more than in the plain mean (HE2RNA/SEQUOIA-style slide models). Per-tile
predictions (EMO-spatial) are the instance predictions s_i; EMO-average uses the attention pool.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from emo.errors import EmoError
from emo.models.head_config import TorchHeadConfig


class AttentionMILConfig(TorchHeadConfig):
    """Gated-attention MIL head: a slide's prediction is its tiles' attention-weighted embedding."""

    hidden: int = Field(128, ge=1, description="tile embedding units")
    attention: int = Field(64, ge=1, description="attention units")
    dropout: float = Field(0.25, ge=0, lt=1)


def _module(dim: int, n_genes: int, cfg: AttentionMILConfig):
    import torch
    from torch import nn

    class GatedAttentionMIL(nn.Module):
        def __init__(self):
            super().__init__()
            for name, size in (("x_mean", dim), ("x_std", dim), ("y_mean", n_genes), ("y_std", n_genes)):
                self.register_buffer(name, torch.zeros(size) if name.endswith("mean") else torch.ones(size))
            self.embed = nn.Sequential(nn.Linear(dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout))
            self.instance = nn.Linear(cfg.hidden, n_genes)
            self.att_v = nn.Linear(cfg.hidden, cfg.attention)
            self.att_u = nn.Linear(cfg.hidden, cfg.attention)
            self.att_w = nn.Linear(cfg.attention, 1)

        def tiles(self, x):
            """Embeddings → (instance predictions [n, genes], attention logits [n]) in standardised units."""
            h = self.embed((x - self.x_mean) / self.x_std)
            logits = self.att_w(torch.tanh(self.att_v(h)) * torch.sigmoid(self.att_u(h))).squeeze(-1)
            return self.instance(h), logits

        def forward(self, bags: list):
            out = []
            for x in bags:
                s, logits = self.tiles(x)
                out.append(torch.softmax(logits, dim=0) @ s)
            return torch.stack(out)

    return GatedAttentionMIL()


class AttentionMILHead:
    """All-gene gated-attention MIL head; `pool(bag)` is the slide prediction, `predict(x)` per tile."""

    kind = "attention_mil"
    slide_pooling = "attention"

    def __init__(self, module, config: AttentionMILConfig):
        self.module = module.eval()
        self.config = config
        self.fit_report: dict = {"per_gene": {}, "tuning": {}}

    @staticmethod
    def tiles_per_sample(config) -> int | None:
        """Tiles sampled (once, seeded) per slide for slide-level training."""
        return config.attention_mil_config().tiles_per_slide

    def head_config(self) -> dict:
        return self.config.model_dump()

    @property
    def dim(self) -> int:
        return int(self.module.x_mean.shape[0])

    def _scale(self, t) -> np.ndarray:
        return (t * self.module.y_std + self.module.y_mean).numpy()

    def predict(self, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(x), chunk):
                s, _ = self.module.tiles(torch.from_numpy(np.asarray(x[start : start + chunk], dtype=np.float32)))
                out.append(self._scale(s))
        return np.concatenate(out) if out else np.zeros((0, len(self.module.y_mean)), np.float32)

    def pool(self, bag: np.ndarray) -> np.ndarray:
        """Slide prediction [genes]: attention-weighted instance predictions of all its tiles."""
        import torch

        if len(bag) == 0:
            raise EmoError("attention_mil: a slide without tiles has no prediction")
        with torch.inference_mode():
            return self._scale(self.module([torch.from_numpy(np.asarray(bag, dtype=np.float32))])[0])

    def to_tensors(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], config: dict) -> AttentionMILHead:
        import torch

        cfg = AttentionMILConfig(**config)
        module = _module(tensors["x_mean"].shape[0], tensors["y_mean"].shape[0], cfg)
        module.load_state_dict({k: torch.from_numpy(np.array(tensors[k])) for k in module.state_dict()})
        return cls(module, cfg)

    @classmethod
    def fit(cls, x_train, y_train, x_tune, y_tune, *, groups_train=None, groups_tune=None, config) -> AttentionMILHead:
        """Bags = a sample's rows (`groups_*`: one slide's tiles, or one tile at tile level)."""
        from emo.models.heads import group_bags

        head, info = cls.fit_bags(group_bags(x_train, groups_train), y_train, group_bags(x_tune, groups_tune), y_tune,
                                  config.attention_mil_config())
        head.fit_report = {"per_gene": {}, "tuning": {k: info[k] for k in ("best_epoch", "epochs", "tune_history")}}
        return head

    @classmethod
    def fit_bags(cls, train_bags: list[np.ndarray], y_train: np.ndarray, tune_bags: list[np.ndarray],
                 y_tune: np.ndarray, config: AttentionMILConfig | None = None) -> tuple[AttentionMILHead, dict]:
        """`emo.models.heads.fit_bag_module` with the attention pool as the bag prediction."""
        from emo.models.heads import fit_bag_module

        cfg = config or AttentionMILConfig()
        module, metrics = fit_bag_module(lambda dim, n_genes: _module(dim, n_genes, cfg), lambda m, bags: m(bags),
                                         train_bags, y_train, tune_bags, y_tune, cfg, "attention_mil")
        return cls(module, cfg), metrics
