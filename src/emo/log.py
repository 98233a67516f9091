"""The library's one output channel: the `emo` logger (modules log to `logging.getLogger(__name__)`).

Messages are plain sentences; a warning reads `emo: warning: <what>; <what to do>`. The CLI installs
the rich handler (`setup`) with its `--verbose`/`--quiet` level; a library caller configures logging
as it likes (without a handler Python shows warnings and errors only). Progress bars are `emo.progress`.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("emo")


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"emo: {record.levelname.lower()}: {message}"
        return message


def warn(message: str) -> None:
    """Tell the user something worth knowing that does not stop the work (`emo: warning: message`)."""
    logger.warning(message)


def setup(verbosity: int = 0) -> None:
    """Show the `emo` logger on stderr through rich (above any progress bar, lines never wrapped):
    info by default, debug at `verbosity` > 0, warnings only at < 0."""
    from rich.console import Console
    from rich.logging import RichHandler

    class Handler(RichHandler):
        def render(self, *, record, traceback, message_renderable):  # the message alone, one line per line
            return message_renderable

    handler = Handler(console=Console(stderr=True, soft_wrap=True), markup=False, highlighter=None)
    handler.setFormatter(_Format())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO)
    logger.propagate = False
