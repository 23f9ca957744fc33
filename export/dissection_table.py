"""The recipe's ``semantic`` field: Network Dissection at export time, written into the archive for ``semantic``.

```yaml
semantic:
  layer: features.denseblock3   # module path in model.named_modules(): the layer to dissect and attribute over
  concepts: phantom             # the annotated data: the phantom set's anatomy and finding masks, or your own
                                #   as cxrexplain-eval reads it: {images: DIR, masks: DIR, boxes: CSV}
  n: 200                        # images dissected (default 200)
  seed: 0                       # which phantoms (default 0)
```

The exporter runs :func:`cxrexplain_lab.dissection.dissect` ([Khakzar2021] eq. 5) over the data at the
classifier's input size and writes each unit's best concept, IoU and detector flag as ``dissection.json``
(:class:`cxrexplain.semantic.DissectionTable`); ``serve.json`` names it, and the worker then serves ``semantic``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from cxrexplain.bundle import ClassifierBundle
from cxrexplain.errors import CxrExplainError
from cxrexplain.semantic import DissectionTable
from cxrexplain_lab.dissection import dissect
from cxrexplain_lab.evaluation.annotated import annotated_images
from cxrexplain_lab.evaluation.data import load_folder, parse_aliases
from cxrexplain_lab.phantom import PhantomDataset
from cxrexplain_lab.units import AnnotatedImage, from_phantoms

from .recipe import DEFAULT_DISSECTION_N, RecipeError

log = logging.getLogger(__name__)


def annotated_data(bundle: ClassifierBundle, semantic: dict[str, Any]) -> tuple[list[AnnotatedImage], str]:
    """The annotated images in the classifier's input space, and a line saying what they are."""
    n, seed, size = int(semantic.get("n", DEFAULT_DISSECTION_N)), int(semantic.get("seed", 0)), bundle.input_spec.size
    concepts = semantic["concepts"]
    if isinstance(concepts, dict):  # users' folder, read as cxrexplain-eval reads it; the first n images
        folder = load_folder(concepts["images"], bundle.labels, concepts.get("boxes"), concepts.get("masks"),
                             parse_aliases([]))
        folder.images = folder.images[:n]
        data = annotated_images(folder, bundle)
        for kind, message in folder.problems.entries:
            log.warning("semantic: skipped (%s) %s", kind, message)
        names = sorted({c for item in data for c in item.masks})
        return data, (f"{len(data)} images of {concepts['images'].name}/ ({len(folder.problems.entries)} skipped), "
                      f"concepts {', '.join(names)}")
    phantoms = PhantomDataset(n, size=size, seed=seed)
    data = from_phantoms(phantoms.sample(i) for i in range(n))
    spec = bundle.input_spec
    with torch.no_grad():
        data = [AnnotatedImage(spec.from_unit(item.image[None])[0], item.masks) for item in data]
    return data, f"phantom set: {n} images of {size} px, seed {seed}, masks of left_lung, right_lung, heart, findings"


def dissection_table(bundle: ClassifierBundle, semantic: dict[str, Any], name: str) -> DissectionTable:
    """Dissect ``semantic['layer']`` of ``bundle``'s model over ``semantic['concepts']``; a layer the model does
    not have, or one that does not output a feature map, raises :class:`RecipeError` naming ``name``."""
    data, description = annotated_data(bundle, semantic)
    module = bundle.module.eval()
    try:
        result = dissect(module, semantic["layer"], data)
    except CxrExplainError as exc:  # find_layer / the feature-map check: name the recipe field to fix
        raise RecipeError(f"{name}: semantic.layer: {exc}") from exc
    labels = result.unit_labels()
    return DissectionTable(layer=result.layer, concepts=tuple(u.concept for u in labels),
                           ious=tuple(u.iou for u in labels), detectors=tuple(u.detector for u in labels),
                           data=description, detector_iou=result.detector_iou)
