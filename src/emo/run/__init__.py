"""`emo run`: a whole study from one validated YAML file, resumable stage by stage."""

from emo.run.config import StudyConfig, load_study, parse_study
from emo.run.pipeline import STAGE_NAMES, STAGES, run_study
from emo.run.runner import Stage, StudyContext, run_stages
from emo.run.template import SPOT_TEMPLATE, STUDY_TEMPLATE, write_template

__all__ = [
    "SPOT_TEMPLATE",
    "STAGES",
    "STAGE_NAMES",
    "STUDY_TEMPLATE",
    "Stage",
    "StudyConfig",
    "StudyContext",
    "load_study",
    "parse_study",
    "run_stages",
    "run_study",
    "write_template",
]
