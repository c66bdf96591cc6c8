"""The one error class ropeflow raises for a backend that cannot run here."""

from __future__ import annotations


class BackendUnavailableError(ValueError):
    """A backend was asked for by name but cannot run on this machine (a ValueError of the ``backend`` argument).

    The message says what is missing and how to install it.
    """
