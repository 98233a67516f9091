"""Base of every stage's configuration: validated pydantic models that forbid unknown keys.

A stage owns its config (`TilingConfig`, `ExtractionConfig`, `EvaluateConfig`, `ClustersConfig`, …);
`emo run`'s `StudyConfig` composes them and the CLI builds the same objects, so a study file and a
command line can only mean the same thing. `StageConfig.build` turns a config plus keyword overrides
into one validated object and reports a bad option as one `EmoError` line naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from emo.errors import EmoError

C = TypeVar("C", bound="StageConfig")

#: target principal components a model predicts; 0 and null both mean none (every gene directly)
Components = Annotated[int | None, Field(ge=0), AfterValidator(lambda v: v or None)]


def validation_message(exc: ValidationError, source: str) -> str:
    """The first pydantic error as `source: key: message` (unknown keys named as such)."""
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown option '{where}'"
    return f"{source}: {where}: {err['msg'].removeprefix('Value error, ')}"


class StageConfig(BaseModel):
    """A stage's validated, immutable options (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def build(cls: type[C], config: C | None = None, what: str | None = None, **options: Any) -> C:
        """`config` (default: all defaults) with `options` overriding its fields, validated again."""
        data = {**(config.model_dump() if config is not None else {}), **options}
        try:
            return cls(**data)
        except ValidationError as exc:
            message = validation_message(exc, what or cls.__name__)
            if exc.errors()[0]["type"] == "extra_forbidden":
                message += f"; options are {', '.join(cls.model_fields)}"
            raise EmoError(message) from None
