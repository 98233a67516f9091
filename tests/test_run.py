"""`emo run` machinery: study config validation, the commented template, and the stage runner's
skip / redo / --from logic on toy stages that read and write real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emo.errors import EmoError
from emo.run import STAGES, STUDY_TEMPLATE, Stage, StudyConfig, StudyContext, load_study, parse_study, run_stages
from emo.run.runner import record_path

# ---------------------------------------------------------------- config


def test_template_parses_into_study_config_with_defaults(tmp_path):
    (tmp_path / "study.yaml").write_text(STUDY_TEMPLATE)
    config = load_study(tmp_path / "study.yaml")
    assert isinstance(config, StudyConfig)
    assert config.out_dir == tmp_path / "emo-study"
    assert config.slides.tile_size_um == 271 and config.slides.target_mpp == 0.453
    assert config.expression.samples == "expression/samples.tsv"
    # every documented key is in the template: dumping it back gives the same keys, section by section
    written, dumped = yaml.safe_load(STUDY_TEMPLATE), config.model_dump(exclude={"base_dir"})
    assert set(written) == set(dumped)
    for section in ("slides", "features", "evaluation", "expression", "training"):
        assert set(written[section]) == set(dumped[section]), section
    assert set(written["evaluation"]["thresholds"]) == set(dumped["evaluation"]["thresholds"])


def test_study_sections_are_the_stages_own_configs(tmp_path):
    """The study composes the stage configs: a study option is the command-line option, validated alike."""
    from emo.analysis import EvaluateConfig
    from emo.analysis.clustering import ClustersConfig
    from emo.features.config import ExtractionConfig
    from emo.slides import TilingConfig

    config = parse_study({"slides": {"min_sharpness": 25, "min_roi": 0.5, "roi": "rois"},
                          "features": {"pooling": "multistage"},
                          "evaluation": {"thresholds": {"r2_min": 0.3, "cohorts": ["A"]}},
                          "analyses": {"clusters": {"k": 3, "orient": "genes"}}}, base_dir=tmp_path)
    tiling = config.slides.tiling(config.path)
    assert isinstance(tiling, TilingConfig) and tiling.min_sharpness == 25 and tiling.min_roi == 0.5
    assert tiling.roi == tmp_path / "rois"
    assert isinstance(config.features, ExtractionConfig) and config.features.pooling == "multistage"
    assert EvaluateConfig.build(**config.evaluation.thresholds.model_dump()).r2_min == 0.3
    assert isinstance(config.analyses.clusters, ClustersConfig)
    assert config.analyses.clusters.orientation == "genes-by-samples"  # the old vocabulary still parses
    with pytest.raises(EmoError, match=r"analyses.clusters.n_clusters"):
        parse_study({"analyses": {"clusters": {"n_clusters": 3}}})
    with pytest.raises(EmoError, match=r"evaluation.thresholds.r2_min"):
        parse_study({"evaluation": {"thresholds": {"r2_min": "high"}}})


@pytest.mark.parametrize(
    "data, key",
    [({"slides": {"tile_size": 256}}, "slides.tile_size"), ({"outdir": "x"}, "outdir"), ({"executor": {"name": "local", "worker": 2}}, "executor.worker")],
)
def test_unknown_keys_are_one_line_errors_naming_the_key(data, key):
    with pytest.raises(EmoError) as info:
        parse_study(data, source="study.yaml")
    assert f"unknown key '{key}'" in str(info.value) and "\n" not in str(info.value)


def test_bad_values_name_the_field():
    with pytest.raises(EmoError, match=r"slides.min_tissue: .*less than or equal to 1"):
        parse_study({"slides": {"min_tissue": 3}})
    with pytest.raises(EmoError, match=r"executor.name"):
        parse_study({"executor": {"name": "dask"}})


def test_slide_globs_resolve_relative_to_the_study_file(tmp_path):
    for name in ("b.svs", "a.svs", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    config = parse_study({"slides": {"paths": ["*.svs"]}}, base_dir=tmp_path)
    assert config.slide_paths() == [tmp_path / "a.svs", tmp_path / "b.svs"]
    with pytest.raises(EmoError, match=r"'\*.ndpi' matches no file"):
        parse_study({"slides": {"paths": ["*.ndpi"]}}, base_dir=tmp_path).slide_paths()


@pytest.mark.slow
def test_cli_init_then_run_reports_a_typo_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    study = tmp_path / "study.yaml"
    init = subprocess.run([sys.executable, "-m", "emo", "init", str(study)], capture_output=True, text=True, env=env)
    assert init.returncode == 0 and study.exists()
    again = subprocess.run([sys.executable, "-m", "emo", "init", str(study)], capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "already exists" in again.stderr
    study.write_text(study.read_text().replace("  min_tissue: 0.5", "  min_tisue: 0.5"))
    run = subprocess.run([sys.executable, "-m", "emo", "run", str(study)], capture_output=True, text=True, env=env)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"emo: error: {study}: unknown key 'slides.min_tisue'; check its spelling against `emo init`"]


def test_pipeline_stages_are_declared_in_dependency_order():
    seen: set[str] = set()
    for stage in STAGES:
        assert set(stage.after) <= seen, stage.name
        seen.add(stage.name)
    assert [s.name for s in STAGES] == ["tile", "features", "expression", "train", "predict", "null", "evaluate", "analyze",
                                        "report"]


# ---------------------------------------------------------------- runner on toy stages


class Toy:
    """Three chained stages: words (reads input texts) → lengths → total; `b` is an independent stage."""

    def __init__(self, root: Path):
        self.root = root
        self.inputs = root / "in"
        self.inputs.mkdir()
        (self.inputs / "a.txt").write_text("alpha beta")
        (self.inputs / "b.txt").write_text("gamma")
        self.config = {"lower": True}
        self.calls: list[str] = []
        self.fail: str | None = None

    def out(self, name: str) -> Path:
        return self.root / "out" / name

    def _run(self, name: str, fn) -> None:
        self.calls.append(name)
        if self.fail == name:
            raise RuntimeError(f"{name} broke")
        self.out(name).parent.mkdir(parents=True, exist_ok=True)
        self.out(name).write_text(json.dumps(fn()))

    def stages(self) -> list[Stage]:
        def words(ctx):
            text = " ".join(p.read_text() for p in sorted(self.inputs.glob("*.txt")))
            self._run("words", lambda: (text.lower() if ctx.config["lower"] else text.upper()).split())

        def lengths(ctx):
            self._run("lengths", lambda: [len(w) for w in json.loads(self.out("words").read_text())])

        def total(ctx):
            self._run("total", lambda: sum(json.loads(self.out("lengths").read_text())))

        def side(ctx):
            self._run("side", lambda: "independent")

        return [
            Stage(name="words", run=words, inputs=lambda ctx: [self.inputs], params=lambda ctx: dict(ctx.config),
                  outputs=lambda ctx: [self.out("words")]),
            Stage(name="side", run=side, outputs=lambda ctx: [self.out("side")]),
            Stage(name="lengths", run=lengths, inputs=lambda ctx: [self.out("words")], outputs=lambda ctx: [self.out("lengths")], after=("words",)),
            Stage(name="total", run=total, inputs=lambda ctx: [self.out("lengths")], outputs=lambda ctx: [self.out("total")], after=("lengths",)),
        ]

    def run(self, **kw) -> dict[str, str]:
        self.calls.clear()
        ctx = StudyContext(config=self.config, out_dir=self.root / "out")
        return run_stages(self.stages(), ctx, **kw)


@pytest.fixture
def toy(tmp_path):
    return Toy(tmp_path)


def test_first_run_runs_everything_and_records_it(toy):
    assert set(toy.run().values()) == {"ran"}
    assert json.loads(toy.out("total").read_text()) == len("alphabetagamma")
    record = json.loads(record_path(toy.root / "out", "words").read_text())
    assert record["params"] == {"lower": True} and list(record["inputs"]) == [str(toy.inputs)]


def test_second_identical_run_skips_everything(toy):
    toy.run()
    assert set(toy.run().values()) == {"skipped"} and toy.calls == []


def test_changed_input_redoes_that_stage_and_downstream_only(toy):
    toy.run()
    (toy.inputs / "c.txt").write_text("delta")
    status = toy.run()
    assert status == {"words": "ran", "side": "skipped", "lengths": "ran", "total": "ran"}
    assert json.loads(toy.out("total").read_text()) == len("alphabetagammadelta")


def test_changed_parameter_redoes_downstream(toy):
    toy.run()
    toy.config["lower"] = False
    assert toy.run()["total"] == "ran"
    assert json.loads(toy.out("words").read_text()) == ["ALPHA", "BETA", "GAMMA"]


def test_missing_output_is_redone(toy):
    toy.run()
    toy.out("lengths").unlink()
    assert toy.run() == {"words": "skipped", "side": "skipped", "lengths": "ran", "total": "ran"}


def test_from_forces_that_stage_and_every_later_one(toy):
    toy.run()
    assert toy.run(from_stage="lengths") == {"words": "skipped", "side": "skipped", "lengths": "ran", "total": "ran"}
    with pytest.raises(EmoError, match="--from tiles: no such stage; choose one of words, side, lengths, total"):
        toy.run(from_stage="tiles")


def test_from_deletes_the_forced_stages_outputs_inside_the_run_folder(tmp_path):
    out = tmp_path / "out"
    outside = tmp_path / "given.txt"
    outside.write_text("user data")

    def cached_stage(ctx):  # like a stage API that skips items it finds finished
        (out / "cache").mkdir(parents=True, exist_ok=True)
        if not (out / "cache" / "item.txt").exists():
            (out / "cache" / "item.txt").write_text(f"computed {ctx.config['version']}")

    stages = [Stage(name="cache", run=cached_stage, outputs=lambda ctx: [out / "cache", outside])]
    run_stages(stages, StudyContext(config={"version": 1}, out_dir=out))
    run_stages(stages, StudyContext(config={"version": 2}, out_dir=out), from_stage="cache")
    assert (out / "cache" / "item.txt").read_text() == "computed 2"
    assert outside.read_text() == "user data"


def test_a_failed_stage_leaves_no_record_and_a_rerun_resumes_there(toy):
    toy.fail = "lengths"
    with pytest.raises(RuntimeError, match="lengths broke"):
        toy.run()
    assert not record_path(toy.root / "out", "lengths").exists()
    toy.fail = None
    assert toy.run() == {"words": "skipped", "side": "skipped", "lengths": "ran", "total": "ran"}


def test_missing_input_is_a_one_line_error_naming_stage_and_path(toy):
    toy.run()
    toy.out("words").unlink()
    stages = toy.stages()[2:]  # without the stage that would remake it
    ctx = StudyContext(config=toy.config, out_dir=toy.root / "out")
    with pytest.raises(EmoError, match=rf"stage lengths: input {toy.out('words')} does not exist"):
        run_stages(stages, ctx)


def test_a_stage_api_missing_from_the_install_is_a_one_line_error(tmp_path):
    def needs_missing(ctx):
        from emo.no_such_stage import run  # noqa: F401

    with pytest.raises(EmoError, match="stage predict: emo.no_such_stage is missing from this emo install"):
        run_stages([Stage(name="predict", run=needs_missing)], StudyContext(config={}, out_dir=tmp_path))
    assert not record_path(tmp_path, "predict").exists()


def test_missing_files_and_settings_name_their_key(tmp_path):
    (tmp_path / "samples.csv").write_text("sample_id\n")
    study = {"expression": {"matrices": ["expr.csv"], "samples": "samples.csv", "reference_cohort": "a"}}
    with pytest.raises(EmoError, match=r"^expression.matrices\[0\]: .*expr.csv does not exist; fix the path"):
        parse_study(study, base_dir=tmp_path).check_files()
    (tmp_path / "expr.csv").write_text("gene\n")
    parse_study(study, base_dir=tmp_path).check_files()
    study["expression"]["reference_cohort"] = None
    with pytest.raises(EmoError, match=r"^expression.reference_cohort: not set"):
        parse_study(study, base_dir=tmp_path).check_files()
    with pytest.raises(EmoError, match=r"^analyses.gmt\[0\]: "):
        parse_study({"expression": {"targets": "expr.csv"}, "analyses": {"gmt": ["h.gmt"]}}, base_dir=tmp_path).check_files()


def test_null_baseline_is_its_own_stage_for_the_features_protocol(tmp_path):
    """The permuted-label model is the `null` stage (evaluate/null/), which evaluate reads but never deletes."""
    stages = {s.name: s for s in STAGES}
    null, evaluate = stages["null"], stages["evaluate"]
    assert "null" in evaluate.after

    def ctx(data):
        return StudyContext(config=parse_study(data, base_dir=tmp_path), out_dir=tmp_path)

    default = ctx({})
    assert null.enabled(default) and null.outputs(default) == [tmp_path / "evaluate" / "null"]
    assert evaluate.outputs(default) == [tmp_path / "evaluate" / "validation", tmp_path / "evaluate" / "test"]
    nulls = [tmp_path / "evaluate" / "null" / f"perm_{k:02d}" / "predictions" / "average.h5ad" for k in range(10)]
    assert all(p in evaluate.inputs(default) for p in nulls)  # evaluation.null_permutations: 10 by default
    assert null.params(ctx({"evaluation": {"null_permutations": 3}}))["null_permutations"] == 3
    with pytest.raises(EmoError, match="null_permutations"):
        ctx({"evaluation": {"null_permutations": 1}})
    for data in ({"training": {"protocol": "paper", "genes": "ESR1"}}, {"evaluation": {"null_baseline": False}}):
        assert not null.enabled(ctx(data))
        assert all("null" not in p.parts for p in evaluate.inputs(ctx(data)))


def test_a_run_killed_after_from_is_finished_by_a_plain_run(tmp_path):
    """`--from` forgets the records of the stages it redoes before running them: a stage killed after
    writing part of its output folder is redone by the next plain run, and so is what reads it."""
    out, crash = tmp_path / "out", [False]

    def source(ctx):
        out.mkdir(exist_ok=True)
        (out / "source.txt").write_text("abc")

    def predict(ctx):  # writes its folder slide by slide, like the predict stage
        (out / "pred").mkdir(parents=True, exist_ok=True)
        for i, letter in enumerate((out / "source.txt").read_text()):
            if crash[0] and i == 1:
                raise KeyboardInterrupt  # stands for kill -9 (the runner cannot react to either)
            (out / "pred" / f"{letter}.txt").write_text(letter.upper())

    def average(ctx):
        (out / "average.txt").write_text("".join(p.read_text() for p in sorted((out / "pred").glob("*.txt"))))

    stages = [
        Stage(name="source", run=source, outputs=lambda ctx: [out / "source.txt"]),
        Stage(name="predict", run=predict, inputs=lambda ctx: [out / "source.txt"], outputs=lambda ctx: [out / "pred"], after=("source",)),
        Stage(name="average", run=average, inputs=lambda ctx: [out / "pred"], outputs=lambda ctx: [out / "average.txt"], after=("predict",)),
    ]
    run = lambda **kw: run_stages(stages, StudyContext(config={}, out_dir=out), **kw)  # noqa: E731
    run()
    crash[0] = True
    with pytest.raises(KeyboardInterrupt):
        run(from_stage="predict")
    assert sorted(p.name for p in (out / "pred").iterdir()) == ["a.txt"]  # half redone
    assert not record_path(out, "predict").exists() and not record_path(out, "average").exists()
    crash[0] = False
    assert run() == {"source": "skipped", "predict": "ran", "average": "ran"}
    assert (out / "average.txt").read_text() == "ABC"
