"""`emo run`: a whole study from one validated YAML file, resumable stage by stage."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["StudyConfig", "load_study", "parse_study"],
        "pipeline": ["STAGES", "STAGE_NAMES", "run_study"],
        "runner": ["Stage", "StudyContext", "run_stages"],
        "template": ["SPOT_TEMPLATE", "STUDY_TEMPLATE", "write_template"],
    },
)
