"""User-facing errors.

Library code raises :class:`UserError` (or a subclass) for bad input: a missing file, an
unknown option, an impossible combination. The CLI prints its message on one line and exits
with status 2, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user; the message says what is wrong and what to do."""


class MissingWeightsError(UserError, FileNotFoundError):
    """Real pretrained weights are needed but are not on disk (and the network is off)."""
