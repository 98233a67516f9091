"""Progress of long work: one mechanism (rich), bars on stderr with the rate in the work's own unit."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

T = TypeVar("T")


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"? {self.unit}/s", style="progress.data.speed")


@contextmanager
def progress_bar(description: str, total: int, unit: str = "item", *, disable: bool | None = False,
                 transient: bool = False) -> Iterator[tuple[Callable[[int], None], Callable[[str], None]]]:
    """`(advance(n), say(message))` for a bar of `total` units; `disable=None` shows it on a terminal only.

    `say` prints above the bar without breaking it.
    """
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
                  TimeRemainingColumn(), console=console, transient=transient,
                  disable=not console.is_terminal if disable is None else disable) as bar:
        task = bar.add_task(description, total=total)
        yield (lambda n=1: bar.advance(task, n)), console.print


def track(items: Sequence[T], description: str, unit: str = "item", *, disable: bool | None = False) -> Iterator[T]:
    """`items` with a `progress_bar` advancing once per item."""
    with progress_bar(description, len(items), unit, disable=disable) as (advance, _):
        for item in items:
            yield item
            advance(1)
