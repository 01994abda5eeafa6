"""User-facing errors: the CLI prints ``privquant: error: <message>`` and exits non-zero."""

from __future__ import annotations


class PrivQuantError(Exception):
    """An error a user can cause (bad path, shape, bit width, corrupt artifact, dead peer).

    The CLI turns it into one clear line on stderr and exit status 2, never a traceback.
    """


class ArtifactError(PrivQuantError):
    """A .pq artifact is missing, truncated, corrupt, tampered with or of an unknown version."""


class DataError(PrivQuantError):
    """A dataset or input image is missing or malformed."""


class PeerError(PrivQuantError):
    """A peer disconnected, timed out, or runs a different model."""
