"""Stage runner: run stages in order, skipping those whose inputs and parameters did not change.

Each stage that finishes writes `<out>/.emo/stages/<stage>.json` (atomically) with its parameters and
its inputs' fingerprints. A re-run skips a stage whose record matches and whose outputs exist, redoes
one whose record differs, and then everything that depends on it; `from_stage` forces a stage and
every stage after it, deleting their outputs first (only those inside the output folder) so that the
stage APIs' own per-slide caches cannot hand back the old results. Before a stage runs, its record and
those of every stage depending on it are deleted, so a run killed at any point (`--from` included)
leaves no record claiming a half-redone stage is finished: a plain re-run redoes it — and the stage
APIs themselves resume per slide or gene, so only the item in flight is lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from emo.errors import EmoError
from emo.io import file_fingerprint, write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class StudyContext:
    """What stage functions see: the validated config, the output folder and the executor."""

    config: Any
    out_dir: Path
    executor_name: str = "local"
    executor_options: dict[str, Any] = field(default_factory=dict)
    _executor: Any = None

    def executor(self):
        """The study's executor, built on first use (a Ray cluster starts only if a stage needs it)."""
        if self._executor is None:
            from emo.executors import get_executor

            self._executor = get_executor(self.executor_name, **self.executor_options)
        return self._executor

    def stage_executor(self):
        """What a stage API's `executor=` gets: None locally (the stage sizes its own pool from its
        `workers` setting), else the study's one shared Ray/SLURM executor."""
        return None if self.executor_name == "local" else self.executor()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None


def _nothing(ctx: StudyContext) -> list:
    return []


def _no_params(ctx: StudyContext) -> dict:
    return {}


def _always(ctx: StudyContext) -> bool:
    return True


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One step: `run(ctx)` reads `inputs(ctx)`, is configured by `params(ctx)`, writes `outputs(ctx)`;
    `after` names the stages whose outputs it reads; `enabled(ctx)` False leaves it out of this study.
    `run` calls its stage API as `verb(inputs…, out_dir, config, *, executor=ctx.stage_executor())`."""

    name: str
    run: Callable[[StudyContext], Any]
    inputs: Callable[[StudyContext], Sequence[Path]] = _nothing
    params: Callable[[StudyContext], dict[str, Any]] = _no_params
    outputs: Callable[[StudyContext], Sequence[Path]] = _nothing
    after: tuple[str, ...] = ()
    enabled: Callable[[StudyContext], bool] = _always


def fingerprint(path: Path) -> str:
    """File: `emo.io.file_fingerprint`; folder: hash of every file's relative path and fingerprint
    (files in hidden folders left out)."""
    path = Path(path)
    if path.is_file():
        return file_fingerprint(path)
    if path.is_dir():
        h = hashlib.sha256()
        files = (p for p in path.rglob("*") if p.is_file())  # hidden ones (temporaries, locks) are no content
        for f in sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(path).parts)):
            h.update(f"{f.relative_to(path)}\0{file_fingerprint(f)}\n".encode())
        return h.hexdigest()
    raise FileNotFoundError(path)


def record_path(out_dir: Path, stage: str) -> Path:
    return Path(out_dir) / ".emo" / "stages" / f"{stage}.json"


def _normalise(params: dict[str, Any]) -> Any:
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def _why_stale(stage: Stage, ctx: StudyContext, inputs: dict[str, str], params: Any) -> str | None:
    path = record_path(ctx.out_dir, stage.name)
    if not path.is_file():
        return "no record of a finished run"
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return "unreadable record"
    if record.get("params") != params:
        old = record.get("params", {})
        changed = sorted(k for k in set(params) | set(old) if k not in params or k not in old or params[k] != old[k])
        return f"parameters changed: {', '.join(changed)}"
    if record.get("inputs") != inputs:
        old = record.get("inputs", {})
        changed = sorted(k for k in set(inputs) | set(old) if inputs.get(k) != old.get(k))
        return f"inputs changed: {', '.join(Path(c).name for c in changed[:3])}{' …' if len(changed) > 3 else ''}"
    missing = [p for p in stage.outputs(ctx) if not Path(p).exists()]
    if missing:
        return f"output missing: {missing[0]}"
    return None


def run_stages(
    stages: Sequence[Stage],
    ctx: StudyContext,
    from_stage: str | None = None,
) -> dict[str, str]:
    """Run the stages in order; returns {stage: "ran" | "skipped" | "disabled"}."""
    names = [s.name for s in stages]
    if from_stage is not None and from_stage not in names:
        raise EmoError(f"--from {from_stage}: no such stage; choose one of {', '.join(names)}")
    forced_from = names.index(from_stage) if from_stage else len(names)
    status: dict[str, str] = {}
    try:
        for position, stage in enumerate(stages):
            if not stage.enabled(ctx):
                status[stage.name] = "disabled"
                continue
            input_paths = [Path(p) for p in stage.inputs(ctx)]
            for p in input_paths:
                if not p.exists():
                    raise EmoError(f"stage {stage.name}: input {p} does not exist; fix the study file or run the stage that makes it")
            inputs = {str(p): fingerprint(p) for p in input_paths}
            params = _normalise(stage.params(ctx))
            upstream = [a for a in stage.after if status.get(a) == "ran"]
            if position >= forced_from:
                why = f"forced by --from {from_stage}"
            elif upstream:
                why = f"upstream stage {upstream[0]} re-ran"
            else:
                why = _why_stale(stage, ctx, inputs, params)
            if why is None:
                log.info("stage %s: up to date, skipped", stage.name)
                status[stage.name] = "skipped"
                continue
            log.info("stage %s: running (%s)", stage.name, why)
            _forget(stages, stage.name, ctx)
            if position >= forced_from:
                _remove_outputs(stage, ctx)
            try:
                stage.run(ctx)
            except ImportError as exc:
                if not (exc.name or "").startswith("emo"):
                    raise
                raise EmoError(f"stage {stage.name}: {exc.name} is missing from this emo install ({exc}); reinstall emo") from None
            write_json_atomic(
                record_path(ctx.out_dir, stage.name),
                {
                    "stage": stage.name,
                    "params": params,
                    "inputs": inputs,
                    "outputs": [str(p) for p in stage.outputs(ctx)],
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "emo_version": _version(),
                },
            )
            status[stage.name] = "ran"
    finally:
        ctx.close()
    return status


def _forget(stages: Sequence[Stage], name: str, ctx: StudyContext) -> None:
    """Delete the records of stage `name` and of every stage that reads its outputs, directly or not,
    before it runs: a run killed from here on leaves them to be redone, never to be skipped."""
    stale = {name}
    for stage in stages:  # in order, so dependants of dependants are found in one pass
        if stale.intersection(stage.after):
            stale.add(stage.name)
    for stage in stale:
        record_path(ctx.out_dir, stage).unlink(missing_ok=True)


def _remove_outputs(stage: Stage, ctx: StudyContext) -> None:
    out_dir = Path(ctx.out_dir).resolve()
    for path in (Path(p) for p in stage.outputs(ctx)):
        if not path.resolve().is_relative_to(out_dir):
            continue  # never delete what lives outside the run's folder (e.g. a given targets file)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _version() -> str:
    from emo import __version__

    return __version__
