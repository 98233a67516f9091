"""Typer options that take their default and help from a config field, so the CLI never repeats them."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import BaseModel


def config_option(config: type[BaseModel], field: str, *flags: str, default: Any = ..., help: str | None = None,
                  required: bool = False, **kwargs: Any) -> Any:
    """`typer.Option` for `config.field`: its default (unless `default` is given, e.g. None for "the
    config's") and its description as help (`help` is added after it, e.g. "repeatable"); `required`
    for an option the command cannot do without although the config has a default."""
    info = config.model_fields[field]
    text = "; ".join(t for t in (info.description, help) if t)
    value = ... if required else info.default if default is ... else default
    return typer.Option(value, *flags, help=text, **kwargs)
