"""The render package's errors: one base, split by what the caller should change (the data or an option).

They are ``ValueError`` subclasses so callers without a typed hierarchy still catch them; the server maps
:class:`RenderInputError` to its 400 ``invalid_input`` and :class:`RenderOptionError` to ``invalid_option``.
"""

from __future__ import annotations


class RenderError(ValueError):
    """Base of every error the render package raises on purpose."""


class RenderInputError(RenderError):
    """Data that cannot be drawn: wrong shape, NaN/Inf, a DICOM source without a UID, short bytes."""


class RenderOptionError(RenderError):
    """An option outside what the renderer supports (opacity, PNG bit depth, array dtype)."""
