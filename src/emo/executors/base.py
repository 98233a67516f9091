"""What every executor shares: item-order results, per-item retries, progress, one error report."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

from emo.errors import EmoError

#: outcome of one attempt at one item: (True, result) or (False, "ExcType: message")
Outcome = tuple[bool, Any]

#: prefix of failures where the process or job running the item died (not an exception in fn):
#: items running beside it may have died with it
CRASHED = "worker crashed: "


class ExecutorError(EmoError):
    """Some items failed after all retries; `.failures` maps item index → error, `.results` keeps the rest."""

    def __init__(self, desc: str, items: Sequence[Any], failures: dict[int, str], results: list[Any], attempts: int):
        self.failures = failures
        self.results = results
        shown = "; ".join(f"item {i} ({_short(items[i])}): {failures[i]}" for i in sorted(failures)[:5])
        more = f"; … {len(failures) - 5} more" if len(failures) > 5 else ""
        super().__init__(
            f"{desc}: {len(failures)} of {len(items)} items failed after {attempts} attempt(s): {shown}{more}; "
            "fix the input named and re-run (finished items are kept)"
        )


def _short(item: Any, width: int = 80) -> str:
    """An item as it appears in a one-line report (paths and gene names whole, arrays abridged)."""
    text = " ".join(repr(item).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_exception(exc: BaseException) -> str:
    """One line for the report: exception type and message (first line only)."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def call_item(fn: Callable[[Any], Any], item: Any) -> Outcome:
    """Run fn(item) and turn an exception into a picklable failure record (runs on the worker)."""
    try:
        return True, fn(item)
    except Exception as exc:  # reported per item, never lost
        return False, describe_exception(exc) + _origin(exc)


def _origin(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {f.filename.rsplit('/', 1)[-1]}:{f.lineno})"


class Executor:
    """Base class: subclasses implement `_run(fn, [(index, item)], done) -> {index: Outcome}`, calling
    `done(ok)` as each item finishes."""

    name = "base"

    def __init__(self, retries: int = 1, progress: bool | None = None):
        if retries < 0:
            raise EmoError(f"executor {self.name}: retries={retries} must be >= 0")
        self.retries = retries
        self.progress = progress

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], *, desc: str = "items") -> list[Any]:
        """fn over items in parallel; results in item order; raises ExecutorError if any item fails."""
        from emo.progress import progress_bar

        items = list(items)
        results: list[Any] = [None] * len(items)
        failures: dict[int, str] = {}
        pending = list(range(len(items)))
        attempts = 0
        disable = None if self.progress is None else not self.progress
        with progress_bar(desc, len(items), "item", disable=disable, transient=True) as (advance, say):
            while pending and attempts <= self.retries:
                attempts += 1
                outcomes = self._run(fn, [(i, items[i]) for i in pending], lambda ok: advance(int(ok)))
                pending = []
                for i, (ok, value) in sorted(outcomes.items()):
                    if ok:
                        results[i] = value
                        failures.pop(i, None)
                    else:
                        failures[i] = value
                        pending.append(i)
                if pending and attempts <= self.retries:
                    say(f"{desc}: retrying {len(pending)} failed item(s) (attempt {attempts + 1})")
        if failures:
            raise ExecutorError(desc, items, failures, results, attempts)
        return results

    def _run(self, fn: Callable[[Any], Any], indexed: list[tuple[int, Any]], done: Callable[[bool], Any]) -> dict[int, Outcome]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what this executor started (pools, clusters); safe to call twice."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
