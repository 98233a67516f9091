"""Multi-output heads on cached tile features: every gene is fitted at once.

A head maps features [n, dim] to standardised expression [n, genes] and is trained either at the
slide level (EMO-average: a slide's prediction is the mean of its tiles' predictions, fitted against
the slide's bulk expression) or at the tile/spot level (each row has its own target). Targets are
standardised per gene with training-split statistics for fitting; heads store that normalisation
and return expression on the original scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import Field

from emo.errors import EmoError
from emo.models.head_config import TorchHeadConfig


def default_alphas(n_train: int) -> np.ndarray:
    """Ridge penalties in units of training rows: λ/n from 1e-4 (≈ least squares) to 1e3 (≈ mean)."""
    return n_train * np.logspace(-4, 3, 15)


def _standardise_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-12] = 1.0
    return mean, std


@dataclass
class RidgeFit:
    """Result of the all-gene ridge path: chosen penalty and tuning loss per gene."""

    weight: np.ndarray  # [dim, genes] on raw features → original expression scale
    bias: np.ndarray  # [genes]
    alphas: np.ndarray  # grid evaluated
    alpha: np.ndarray  # [genes] chosen on the tuning split
    tune_mse: np.ndarray  # [alphas, genes] in standardised target units
    extra: dict = field(default_factory=dict)


def fit_ridge_path(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_tune: np.ndarray,
    y_tune: np.ndarray,
    alphas: np.ndarray | None = None,
    chunk_rows: int = 4096,
) -> RidgeFit:
    """Ridge for all genes and all penalties from one eigendecomposition; best penalty per gene.

    Features are standardised with training statistics. With Z = standardised training design,
    Z^T Z = V diag(λ) V^T, the coefficients for penalty α are V diag(1/(λ+α)) V^T Z^T Y, so every
    gene and every α share V and B = (Z V)^T Y; only the diagonal scaling differs. Directions with
    λ ≈ 0 carry no signal (Z^T Y has no component there) and are dropped, so a slide-level fit with
    fewer slides than feature dimensions works in the n-dimensional row space. The tuning split's
    mean squared error is computed for every α at once per chunk of tuning rows and the α with
    the lowest error is kept per gene. Intercepts are not penalised (data are centred), exactly as
    scikit-learn's `Ridge(fit_intercept=True)` on the same standardised features.
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    y_train = np.asarray(y_train, dtype=np.float64)
    n, dim = x_train.shape
    if n < 2:
        raise EmoError("ridge: need at least 2 training samples with features and targets")
    if len(x_tune) < 1:
        raise EmoError("ridge: the tuning split is empty; targets need samples with split == 'tune'")
    alphas = default_alphas(n) if alphas is None else np.asarray(alphas, dtype=np.float64)
    x_mean, x_std = _standardise_stats(x_train)
    y_mean, y_std = _standardise_stats(y_train)
    z = (x_train - x_mean) / x_std
    ys = (y_train - y_mean) / y_std
    eigval, eigvec = np.linalg.eigh(z.T @ z)
    keep = eigval > eigval.max() * 1e-10
    eigval, eigvec = eigval[keep], eigvec[:, keep]
    b = (z @ eigvec).T @ ys  # [k, genes]
    del z, ys
    shrink = 1.0 / (eigval[None, :] + alphas[:, None])  # [alphas, k]

    sse = np.zeros((len(alphas), y_train.shape[1]))
    for start in range(0, len(x_tune), chunk_rows):
        p = ((np.asarray(x_tune[start : start + chunk_rows], dtype=np.float64) - x_mean) / x_std) @ eigvec
        yt = (np.asarray(y_tune[start : start + chunk_rows], dtype=np.float64) - y_mean) / y_std
        for i in range(len(alphas)):
            sse[i] += ((yt - (p * shrink[i]) @ b) ** 2).sum(axis=0)
    tune_mse = sse / len(x_tune)
    best = tune_mse.argmin(axis=0)
    coef = eigvec @ (shrink[best].T * b)  # [dim, genes] in standardised units
    weight = coef / x_std[:, None] * y_std[None, :]
    bias = y_mean - x_mean @ weight
    return RidgeFit(weight.astype(np.float32), bias.astype(np.float32), alphas, alphas[best], tune_mse)


def group_bags(x: np.ndarray, groups: np.ndarray | None) -> list[np.ndarray]:
    """Rows of `x` split into bags by `groups` (contiguous sample indices 0..k-1); None = one row per bag."""
    if groups is None:
        return [r[None] for r in x]
    groups = np.asarray(groups)
    if len(groups) != len(x) or (len(groups) and np.any(np.diff(groups) < 0)):
        raise EmoError(f"groups: need one sorted sample index per row ({len(groups)} for {len(x)} rows)")
    return np.split(x, np.flatnonzero(np.diff(groups)) + 1) if len(x) else []


def predict_groups(head, x: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """A sample's prediction = the mean of its rows' predictions, or the head's own `pool` (attention);
    one row per sample: just predict (a one-tile bag pools to its tile's prediction)."""
    if groups is None or len(np.unique(groups)) == len(x):
        return head.predict(x)
    if getattr(head, "slide_pooling", "mean") != "mean":
        return np.stack([head.pool(b) for b in group_bags(x, groups)])
    return np.stack([head.predict(b).mean(axis=0) for b in group_bags(x, groups)])


def _bag_means(module, bags):
    """Per-bag mean of a per-tile module's outputs (index_add_ is deterministic on CPU)."""
    import torch

    x = torch.cat(bags)
    idx = torch.repeat_interleave(torch.arange(len(bags)), torch.tensor([len(b) for b in bags]))
    out = module(x)
    sums = torch.zeros(len(bags), out.shape[1]).index_add_(0, idx, out)
    return sums / torch.tensor([len(b) for b in bags], dtype=out.dtype)[:, None]


def fit_bag_module(make_module, forward, train_bags: list[np.ndarray], y_train: np.ndarray,
                   tune_bags: list[np.ndarray], y_tune: np.ndarray, cfg, what: str, progress=None):
    """The torch heads' training loop: `make_module(dim, n_genes)` (with x/y mean/std buffers) fitted by
    AdamW on seeded minibatches of bags, `forward(module, bags)` → [bags, genes], MSE in standardised
    target units; the epoch with the lowest tuning MSE is kept (early stopping, `cfg.patience`).
    Returns the module and its tuning history."""
    import torch

    if not tune_bags:
        raise EmoError(f"{what}: the tuning split is empty; targets need samples with split == 'tune'")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    x_mean, x_std = _standardise_stats(np.concatenate(train_bags).astype(np.float64))
    y_mean, y_std = _standardise_stats(np.asarray(y_train, dtype=np.float64))
    module = make_module(train_bags[0].shape[1], y_train.shape[1])
    for name, value in (("x_mean", x_mean), ("x_std", x_std), ("y_mean", y_mean), ("y_std", y_std)):
        getattr(module, name).copy_(torch.from_numpy(value.astype(np.float32)))
    yt_train = torch.from_numpy(((y_train - y_mean) / y_std).astype(np.float32))
    yt_tune = torch.from_numpy(((y_tune - y_mean) / y_std).astype(np.float32))
    train_t = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) for b in train_bags]
    tune_t = [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) for b in tune_bags]
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def tune_loss() -> float:
        module.eval()
        with torch.no_grad():
            total = 0.0
            for s in range(0, len(tune_t), 256):
                total += float(((forward(module, tune_t[s : s + 256]) - yt_tune[s : s + 256]) ** 2).sum())
        return total / yt_tune.numel()

    best_loss, best_state, best_epoch, wait, history = np.inf, None, -1, 0, []
    for epoch in range(cfg.max_epochs):
        module.train()
        order = rng.permutation(len(train_t))
        for s in range(0, len(order), cfg.batch_size):
            batch = order[s : s + cfg.batch_size]
            loss = torch.nn.functional.mse_loss(forward(module, [train_t[i] for i in batch]), yt_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        loss = tune_loss()
        history.append(loss)
        if progress is not None:
            progress(epoch, loss)
        if loss < best_loss:
            best_loss, best_epoch, wait = loss, epoch, 0
            best_state = {k: v.clone() for k, v in module.state_dict().items()}
        else:
            wait += 1
            if wait >= cfg.patience:
                break
    module.load_state_dict(best_state)
    return module.eval(), {"tune_mse": best_loss, "best_epoch": best_epoch, "epochs": len(history),
                           "tune_history": history}


class LinearHead:
    """Per-tile linear model `x @ weight + bias`: the ridge head.

    A linear head fitted on mean-pooled slide features is exactly a per-tile linear model whose mean
    over a slide's tiles equals the slide prediction (the mean commutes with a linear map), so the
    same weights give EMO-average and EMO-spatial; training therefore hands it one pooled row per
    slide (`tiles_per_sample` None).
    """

    kind = "ridge"
    slide_pooling = "mean"

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.fit_report: dict = {"per_gene": {}, "tuning": {}}

    @staticmethod
    def tiles_per_sample(config) -> int | None:
        """None: the head wants each slide's mean feature over all its tiles."""
        return None

    @classmethod
    def fit(cls, x_train, y_train, x_tune, y_tune, *, groups_train=None, groups_tune=None, config) -> LinearHead:
        """All-gene ridge path (`fit_ridge_path`, penalties `config.alphas`) on per-sample mean features."""
        x_train = np.stack([b.mean(axis=0) for b in group_bags(x_train, groups_train)]) \
            if groups_train is not None and len(np.unique(groups_train)) != len(x_train) else x_train
        x_tune = np.stack([b.mean(axis=0) for b in group_bags(x_tune, groups_tune)]) \
            if groups_tune is not None and len(np.unique(groups_tune)) != len(x_tune) else x_tune
        fit = fit_ridge_path(x_train, y_train, x_tune, y_tune, alphas=config.alphas)
        head = cls(fit.weight, fit.bias)
        head.fit_report = {"per_gene": {"alpha": fit.alpha, "tune_mse_std": fit.tune_mse.min(axis=0)},
                           "tuning": {"alphas": fit.alphas.tolist(), "alpha_median": float(np.median(fit.alpha))}}
        return head

    def head_config(self) -> dict:
        return {}

    @property
    def dim(self) -> int:
        return self.weight.shape[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32) @ self.weight + self.bias

    def to_tensors(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], config: dict) -> LinearHead:
        return cls(tensors["weight"], tensors["bias"])


class MLPConfig(TorchHeadConfig):
    """Small per-tile MLP; a slide's prediction is the mean of its tiles' outputs."""

    hidden: int = Field(256, ge=1, description="hidden units")
    dropout: float = Field(0.1, ge=0, lt=1)


def _mlp_module(dim: int, n_genes: int, hidden: int, dropout: float):
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("x_mean", torch.zeros(dim))
            self.register_buffer("x_std", torch.ones(dim))
            self.register_buffer("y_mean", torch.zeros(n_genes))
            self.register_buffer("y_std", torch.ones(n_genes))
            self.net = nn.Sequential(
                nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_genes)
            )

        def forward(self, x):  # standardised target units
            return self.net((x - self.x_mean) / self.x_std)

    return MLP()


class MLPHead:
    """Per-tile MLP trained with MSE on minibatches of slides, all genes together."""

    kind = "mlp"
    slide_pooling = "mean"

    def __init__(self, module, config: MLPConfig):
        self.module = module.eval()
        self.config = config
        self.fit_report: dict = {"per_gene": {}, "tuning": {}}

    @property
    def dim(self) -> int:
        return int(self.module.x_mean.shape[0])

    def predict(self, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(x), chunk):
                xb = torch.from_numpy(np.asarray(x[start : start + chunk], dtype=np.float32))
                out.append((self.module(xb) * self.module.y_std + self.module.y_mean).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.module.y_mean)), np.float32)

    def to_tensors(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], config: dict) -> MLPHead:
        import torch

        cfg = MLPConfig(**config)
        dim, n_genes = tensors["x_mean"].shape[0], tensors["y_mean"].shape[0]
        module = _mlp_module(dim, n_genes, cfg.hidden, cfg.dropout)
        keys = module.state_dict().keys()
        module.load_state_dict({k: torch.from_numpy(np.array(tensors[k])) for k in keys})
        return cls(module, cfg)

    @staticmethod
    def tiles_per_sample(config) -> int | None:
        """Tiles sampled (once, seeded) per slide for slide-level training."""
        return config.mlp_config().tiles_per_slide

    def head_config(self) -> dict:
        return self.config.model_dump()

    @classmethod
    def fit(cls, x_train, y_train, x_tune, y_tune, *, groups_train=None, groups_tune=None, config,
            progress=None) -> MLPHead:
        """Minibatches of bags (a slide's tiles, or one tile); bag prediction = mean over its rows.

        Early stopping keeps the epoch with the lowest tuning MSE (standardised units). CPU runs
        with a fixed seed are deterministic (index_add_ on CPU is, and data order is seeded).
        """
        head, info = cls.fit_bags(group_bags(x_train, groups_train), y_train, group_bags(x_tune, groups_tune), y_tune,
                                  config.mlp_config(), progress)
        head.fit_report = {"per_gene": {}, "tuning": {k: info[k] for k in ("best_epoch", "epochs", "tune_history")}}
        return head

    @classmethod
    def fit_bags(
        cls,
        train_bags: list[np.ndarray],
        y_train: np.ndarray,
        tune_bags: list[np.ndarray],
        y_tune: np.ndarray,
        config: MLPConfig | None = None,
        progress=None,
    ) -> tuple[MLPHead, dict]:
        """The MLP's training loop on explicit bags; returns the head and its tuning history."""
        cfg = config or MLPConfig()
        module, metrics = fit_bag_module(lambda dim, n_genes: _mlp_module(dim, n_genes, cfg.hidden, cfg.dropout),
                                         _bag_means, train_bags, y_train, tune_bags, y_tune, cfg, "mlp", progress)
        return cls(module, cfg), metrics


from emo.models.attention_mil import AttentionMILHead  # noqa: E402 (it reuses fit_bag_module above)

HEADS: dict[str, type] = {"ridge": LinearHead, "mlp": MLPHead, "attention_mil": AttentionMILHead}


def get_head_class(kind: str) -> type:
    if kind not in HEADS:
        raise EmoError(f"unknown head {kind!r}; choose one of: {', '.join(HEADS)}")
    return HEADS[kind]
