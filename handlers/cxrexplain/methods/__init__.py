"""Explanation methods, one module each, registered by their wire name (see :mod:`.base`)."""

from . import base, cam  # noqa: F401
