"""`study.yaml`: one validated description of a whole study, from slides to report.

`StudyConfig` composes the configs the stages own — `slides:` is the tiling stage's `TilingConfig`
(plus which slides), `features:` the features stage's `ExtractionConfig`, `evaluation.thresholds`
`EvaluateThresholds`, `analyses.clusters|differential_expression|enrich` `ClustersConfig`,
`DEConfig`, `EnrichConfig` — so a study option means exactly what the command-line option does.
Every section forbids unknown keys, so a typo is a one-line error naming the key instead of a
silently ignored option. Units are in the names (`tile_size_um`, `target_mpp`). Relative paths are
resolved against the folder of the YAML file.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator

from emo.analysis.config import ClustersConfig, DEConfig, EnrichConfig, EvaluateThresholds
from emo.config import StageConfig, validation_message
from emo.errors import EmoError
from emo.expression.her2st import DESCRIPTION as HER2ST_LAYOUT
from emo.expression.her2st import Her2stLayout
from emo.expression.config import PrepareConfig
from emo.features.config import ExtractionConfig
from emo.prediction.config import PredictionConfig
from emo.slides.config import TilingConfig
from emo.models.spot import SpotModelConfig
from emo.training.config import TrainConfig

GENE_FILE_SUFFIXES = (".txt", ".tsv", ".csv", ".list")


class SlidesConfig(TilingConfig):
    """The tiling stage's own `TilingConfig` (every `emo tile` option, same defaults) plus which slides.
    `roi` and a `stain_reference` file are relative to the study file."""

    paths: list[str] = Field(default_factory=list, description="slide files or globs")
    workers: int = Field(1, ge=1, description="slides tiled in parallel")

    def tiling(self, resolve) -> TilingConfig:
        """The `TilingConfig` `tile_slides` gets, paths resolved with `resolve` (the study's `path`)."""
        options = self.model_dump(exclude={"paths", "workers"})
        if self.roi is not None:
            options["roi"] = resolve(self.roi)
        if self.stain_reference and resolve(self.stain_reference).is_file():
            options["stain_reference"] = str(resolve(self.stain_reference))
        return TilingConfig(**options)


class ExpressionConfig(PrepareConfig):
    """The expression stage's own `PrepareConfig` plus its files (or a ready targets.h5ad)."""

    matrices: list[str] = Field(default_factory=list, description="expression matrices (genes × samples)")
    counts_matrices: list[str] = Field(default_factory=list, description="raw-count matrices (to be normalised)")
    samples: str | None = Field(None, description="sample sheet: sample_id, patient_id, cohort, slide_id, …")
    targets: str | None = Field(None, description="a ready targets.h5ad instead of preparing one")

    def prepare(self) -> PrepareConfig:
        """The `PrepareConfig` part, as `emo expression prepare` builds it."""
        return PrepareConfig(**self.model_dump(include=set(PrepareConfig.model_fields)))


class EvaluationConfig(StageConfig):
    """Which splits are evaluated, with `emo evaluate`'s rules, and the permuted-label null."""

    splits: list[str] = Field(default_factory=lambda: ["validation", "test"], min_length=1,
                              description="each evaluated into evaluate/<split>/ (a test split after validation adds ρ concordance)")
    thresholds: EvaluateThresholds = Field(default_factory=EvaluateThresholds,
                                           description="`emo evaluate`'s rules, e.g. r2_min, fdr_max, alpha")
    null_baseline: bool = Field(True, description="also fit the head on permuted patient labels and report it beside the model")
    null_permutations: int = Field(10, ge=2, description="permuted-label heads fitted: the null distribution of gene counts")


class AnalysesConfig(StageConfig):
    """Each analysis runs when its section is given (`{}` = its defaults)."""

    clusters: ClustersConfig | None = None
    differential_expression: DEConfig | None = None
    enrich: EnrichConfig | None = None
    gmt: list[str] = Field(default_factory=list, description="gene-set files (GMT)")


class ExecutorConfig(StageConfig):
    name: Literal["local", "ray", "slurm"] = "local"
    options: dict[str, Any] = Field(default_factory=dict)


class SpotStudyConfig(SpotModelConfig):
    """Spot-level study (her2st layout, `emo.expression.her2st`): replaces the bulk stages when set.
    The spot model's own `SpotModelConfig` (every `emo spatial train` option, same defaults) plus
    which sections and genes."""

    data_dir: str = Field(..., description=f"folder in the {HER2ST_LAYOUT}")
    train_sections: list[str] = Field(..., min_length=1, description="sections with images to fit on")
    test_sections: list[str] = Field(..., min_length=1, description="held-out sections with images to predict")
    genes: str | list[str] = Field(..., description="gene-list file (one symbol per line), or panel names/genes")
    basis_sections: list[str] | None = Field(None, description="count sections for the target basis (null: all but test)")
    cache: str | None = Field(None, description="spot feature cache folder (null: $EMO_CACHE_DIR or ~/.cache/emo)")

    def spot_model(self) -> SpotModelConfig:
        """The `SpotModelConfig` part, as `emo spatial train` builds it."""
        return SpotModelConfig(**self.model_dump(include=set(SpotModelConfig.model_fields)))

    @field_validator("test_sections")
    @classmethod
    def _held_out(cls, v: list[str], info: Any) -> list[str]:
        overlap = sorted(set(v) & set(info.data.get("train_sections") or []))
        if overlap:
            raise ValueError(f"sections {overlap} are also train_sections; hold test sections out")
        return v

    @field_validator("basis_sections")
    @classmethod
    def _basis_without_test(cls, v: list[str] | None, info: Any) -> list[str] | None:
        leaked = sorted(set(v or []) & set(info.data.get("test_sections") or []))
        if leaked:
            raise ValueError(f"sections {leaked} are test_sections; their counts must not shape the target "
                             "components: remove them from basis_sections")
        return v


class StudyConfig(StageConfig):
    out: str = "emo-study"
    spots: SpotStudyConfig | None = Field(None, validation_alias=AliasChoices("spots", "spatial"),
                                          description="spot-level study instead of slides → bulk targets "
                                                      "(the key `spatial:` of older studies is read too)")
    slides: SlidesConfig = Field(default_factory=SlidesConfig)
    expression: ExpressionConfig = Field(default_factory=ExpressionConfig)
    features: ExtractionConfig = Field(default_factory=ExtractionConfig)
    training: TrainConfig = Field(default_factory=TrainConfig)
    prediction: PredictionConfig = Field(default_factory=PredictionConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    analyses: AnalysesConfig = Field(default_factory=AnalysesConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    #: folder relative paths are resolved against (the YAML file's folder); not a YAML key
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)

    @field_validator("base_dir", mode="before")
    @classmethod
    def _absolute(cls, v: Any) -> Path:
        return Path(v).absolute()

    def path(self, p: str | Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def out_dir(self) -> Path:
        return self.path(self.out)

    def slide_paths(self) -> list[Path]:
        """Slides named by paths or globs, sorted, each found on disk."""
        found: list[Path] = []
        for pattern in self.slides.paths:
            full = str(self.path(pattern))
            if glob.has_magic(full):
                hits = sorted(Path(h) for h in glob.glob(full, recursive=True))
                if not hits:
                    raise EmoError(f"slides.paths: {pattern!r} matches no file; fix the glob")
                found.extend(hits)
            elif Path(full).exists():
                found.append(Path(full))
            else:
                raise EmoError(f"slides.paths: {full} does not exist; fix the path")
        return found


    def check_files(self) -> None:
        """Every input the study names exists (slides, files, gene lists), and preparing targets has what
        it needs; else one EmoError naming the key (e.g. `expression.matrices[1]`). Names (backbones,
        heads, panels) were checked when the file was parsed, so nothing is left to fail late."""
        if self.spots is not None:
            return self._check_spots()
        self.slide_paths()
        named: list[tuple[str, str | None]] = [("slides.roi", self.slides.roi), ("expression.targets", self.expression.targets)]
        e = self.expression
        named += [(f"expression.matrices[{i}]", m) for i, m in enumerate(e.matrices)]
        named += [(f"expression.counts_matrices[{i}]", m) for i, m in enumerate(e.counts_matrices)]
        named += [("expression.samples", e.samples)] + [(f"analyses.gmt[{i}]", g) for i, g in enumerate(self.analyses.gmt)]
        for key, value in named:
            if value and not self.path(value).exists():
                raise EmoError(f"{key}: {self.path(value)} does not exist; fix the path in the study file")
        a = self.analyses
        for key, spec in (("training.genes", self.training.genes), ("prediction.genes", self.prediction.genes),
                          ("analyses.clusters.genes", a.clusters.genes if a.clusters else None),
                          ("analyses.differential_expression.genes",
                           a.differential_expression.genes if a.differential_expression else None)):
            self._check_genes(key, spec)
        if not e.targets:
            if not (e.matrices or e.counts_matrices):
                raise EmoError("expression.matrices: no expression matrix given; list one (or counts_matrices), or set expression.targets")
            if not e.samples:
                raise EmoError("expression.samples: no sample sheet given (sample_id, patient_id, cohort, slide_id); "
                               "add one, or set expression.targets")
            if not e.reference_cohort:
                raise EmoError("expression.reference_cohort: not set; name the cohort (sample sheet `cohort` column) "
                               "the others are aligned to")


    def gene_spec(self, spec: str | Path | list[str] | None) -> str | Path | list[str] | None:
        """A gene spec with a gene-list file resolved against the study's folder (panels and genes as they are)."""
        if isinstance(spec, (str, Path)) and "," not in str(spec) and self.path(spec).is_file():
            return self.path(spec)
        return spec

    def _check_genes(self, key: str, spec: str | Path | list[str] | None) -> None:
        from emo.panels import resolve_genes

        if spec is None:
            return
        text = str(spec)
        if isinstance(spec, (str, Path)) and "," not in text and ("/" in text or Path(text).suffix in GENE_FILE_SUFFIXES) \
                and not self.path(text).is_file():
            raise EmoError(f"{key}: gene list {self.path(text)} does not exist; fix the path (relative to the study file)")
        try:
            genes = resolve_genes(self.gene_spec(spec))
        except EmoError as exc:
            raise EmoError(f"{key}: {exc}") from None
        if not genes:
            raise EmoError(f"{key}: names no gene; list genes or panels, or remove the key")

    def spot_genes_file(self) -> Path | None:
        g = self.spots.genes if self.spots else None
        return self.path(g) if isinstance(g, str) and self.path(g).is_file() else None

    def _check_spots(self) -> None:
        sp = self.spots
        layout = Her2stLayout(self.path(sp.data_dir))
        if not (layout.root / "counts").is_dir():
            raise EmoError(f"spots.data_dir: {layout.root} has no counts/ folder; point it at a her2st-layout folder")
        for key in ("train_sections", "test_sections"):
            for s in getattr(sp, key):
                if not layout.has_image(s):
                    raise EmoError(f"spots.{key}: section {s} has no image in {layout.images_dir}; use sections with images")
        for s in sp.train_sections + sp.test_sections + (sp.basis_sections or []):
            if not layout.has_counts(s):
                raise EmoError(f"spots: section {s}: {layout.counts(s)} not found; fix the section name")
        leaked = sorted(set(sp.basis_sections or []) & set(sp.test_sections))
        if leaked:
            raise EmoError(f"spots.basis_sections: {', '.join(leaked)} are test sections; their counts must not "
                           "shape the target components")
        from emo.run.spot_study import study_genes
        from emo.spot_models.sections import check_sections

        try:
            check_sections(layout.root, sp.train_sections, study_genes(self))
        except EmoError as exc:
            raise EmoError(f"spots: {exc}") from None


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML; any problem is one EmoError naming the file and the key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise EmoError(f"{path}: study file not found; create one with `emo init {path}`")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise EmoError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise EmoError(f"{path}: expected a mapping of sections (slides:, expression:, …) at the top level")
    if "base_dir" in data:
        raise EmoError(f"{path}: base_dir: not allowed (paths are relative to the study file)")
    return parse_study(data, base_dir=path.parent, source=str(path))


def parse_study(data: dict[str, Any], base_dir: str | Path = ".", source: str = "study") -> StudyConfig:
    try:
        return StudyConfig(**data, base_dir=base_dir)
    except ValidationError as exc:
        message = validation_message(exc, source).replace("unknown option", "unknown key")
        if exc.errors()[0]["type"] == "extra_forbidden":
            message += "; check its spelling against `emo init`"
        raise EmoError(message) from None
