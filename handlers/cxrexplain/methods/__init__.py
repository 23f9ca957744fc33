"""Explanation methods, one module each, registered by their wire name (see :mod:`.base`)."""

from . import base, cam, gradcam, gradients, guided_backprop, latent_shift, lrp, rap, semantic  # noqa: F401
