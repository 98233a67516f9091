"""One exception type for every user-facing failure.

The CLI prints `EmoError` messages as one line (no traceback); a message names the file, slide,
sample or gene at fault and the fix, so that bad input never surfaces as a deep library traceback.
"""


class EmoError(Exception):
    """A problem with the user's input or configuration, explained in one line."""

