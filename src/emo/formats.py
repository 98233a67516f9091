"""Format versions and validated attributes of the artifacts emo reads back (tile stores, feature
stores, model folders).

Each artifact records `format_version`; a reader checks it and the attributes it relies on against a
pydantic schema on open, so a store from an incompatible emo or with impossible values (a negative
tile size) is one line naming the file, the field and the fix — not a traceback deep inside numpy.
Artifacts written before format versions existed have format 1, the layout they already had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from emo.errors import EmoError

A = TypeVar("A", bound="ArtifactAttrs")


class ArtifactAttrs(BaseModel):
    """Base schema: `FORMAT` is the format this emo writes and reads; `WHAT` and `FIX` word the error."""

    model_config = ConfigDict(extra="allow")

    FORMAT: ClassVar[int] = 1
    WHAT: ClassVar[str] = "artifact"
    FIX: ClassVar[str] = "re-create it"

    format_version: int = 1

    @classmethod
    def check(cls: type[A], path: str | Path, attrs: dict[str, Any]) -> A:
        """`attrs` validated, or `EmoError("<path>: <what> field <name>=<value> ...; <fix>")`."""
        from emo import __version__

        version = attrs.get("format_version", 1)
        if version != cls.FORMAT:
            raise EmoError(
                f"{path}: {cls.WHAT} field format_version={version!r} (written by emo {attrs.get('emo_version', '?')}); "
                f"this emo {__version__} reads format {cls.FORMAT}; {cls.FIX}"
            )
        try:
            return cls(**attrs)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"])
            value = f"={attrs[field]!r}" if field in attrs else ""
            raise EmoError(f"{path}: {cls.WHAT} field {field}{value}: {err['msg'].lower()}; {cls.FIX}") from None
