"""The evaluation set as the unit analyses take it (:class:`cxrexplain_lab.units.AnnotatedImage`): each image as
the model takes it, its concepts in the model's pixels (through the bundle's resize policy, as ``localize`` maps
them).
"""

from __future__ import annotations

import numpy as np

from cxrexplain import ClassifierBundle
from cxrexplain_lab.units import AnnotatedImage, Progress

from .data import EvalSet, mask_to_model_space
from .localize import regions
from .model import Unreadable, prepare


def annotated_images(data: EvalSet, bundle: ClassifierBundle, boxes_only: bool = False,
                     progress: Progress | None = None) -> list[AnnotatedImage]:
    """Every readable image with its concepts: each finding's lesion (its mask, else the union of its boxes) and
    every other mask (anatomy: ``--masks DIR/<concept>/``, or the phantoms' lungs and heart). ``boxes_only``: the
    findings' boxes alone, the regions [Khakzar2022]'s concept counts count in (a finding annotated by a mask
    only: the mask's bounding box). Unreadable images and findings
    outside the model's crop are recorded in ``data.problems`` and left out."""
    out = []
    for item in progress(data.images) if progress else data.images:
        try:
            x, geometry = prepare(bundle, item)
        except Unreadable as exc:
            data.problems.add("unreadable image", str(exc))
            continue
        masks = {} if boxes_only else {concept: mask_to_model_space(mask, geometry)
                                       for concept, mask in item.masks.items() if concept not in item.label_masks}
        for finding in item.findings:
            found = regions(item, finding, geometry)
            if found is None:
                data.problems.add("box outside the crop", f"{item.name}: every {finding} box lies outside the "
                                  "model's centre crop")
                continue
            box_region, lesion = found
            if not boxes_only:
                masks[finding] = lesion
            else:  # a mask-only finding's region is its mask (localize.regions): count in its bounding box
                masks[finding] = box_region if item.boxes.get(finding) else _bounding_box(box_region)
        out.append(AnnotatedImage(x[0], masks))
    if not out:
        raise ValueError(f"no readable image in {data.source}")
    return out


def _bounding_box(region: np.ndarray) -> np.ndarray:
    """The smallest box holding ``region``: the box an annotator would draw around a mask."""
    if not region.any():
        return region
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    box = np.zeros_like(region)
    box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    return box
