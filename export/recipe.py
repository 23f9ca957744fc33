"""The exporter's declarative recipe: which models to archive, from which local weights, with what metadata.

```yaml
models:
  - name: cxr-densenet            # archive and endpoint name
    kind: classifier              # classifier | autoencoder
    architecture: densenet_small  # see cxrexplain.models / cxrexplain.autoencoder
    weights: .cache/demo-weights/cxr_densenet.pt   # local path; a .json sidecar beside it is read too
    labels: [Cardiomegaly, ...]   # optional: overrides the sidecar
    input_spec: {channels: 1, size: 128, value_range: [0, 1], mean: [0], std: [1]}   # optional
    cam_layer: null               # optional fx node name
    autoencoder: cxr-ae           # optional: name of an autoencoder entry that backs latent_shift
    version: "1.0"                # optional: default = first 12 hex of the weights' sha256
    batch_size: 4                 # TorchServe dynamic batching
    max_batch_delay_ms: 20
    workers: 1
    torch_threads: 2              # optional: torch threads per worker (default: torch's, the physical cores)
    onnx: true                    # write the ONNX predictions fast path (classifiers)
    stream: false                 # also write <name>-stream.mar, the twin gRPC StreamPredictions2 calls
    warm_up: true                 # answer one request of each kind at worker start (first request at warm speed)
    semantic:                     # optional: dissect a layer at export time; the archive then serves `semantic`
      layer: features.denseblock3 #   module path in model.named_modules()
      concepts: phantom           #   the annotated data: the phantom set's anatomy and finding masks, or
                                  #   {images: DIR, masks: DIR, boxes: CSV} as cxrexplain-eval reads them
      n: 200                      #   images dissected (default 200); seed: which phantoms (default 0)
  - name: cxr-ae
    kind: autoencoder
    architecture: resnet_ae_small
    weights: .cache/demo-weights/cxr_ae.pt
```
Relative paths are relative to the recipe file.

``stream: true`` (classifiers): TorchServe 0.12 sends gRPC ``StreamPredictions2`` only to a model with
sequence batching, and such a model cannot answer unary gRPC ``Predictions`` (the frontend never schedules
a request without a sequence id). So the streaming endpoint is a twin: the same files archived again as
``<name>-stream`` with sequence batching on; ``<name>`` keeps REST and unary gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

KINDS = ("classifier", "autoencoder")
STREAM_SUFFIX = "-stream"  # the streaming twin of a classifier archive (``stream: true``)


class RecipeError(ValueError):
    """The recipe is malformed: the message names the entry and the field."""


@dataclass
class ModelEntry:
    name: str
    kind: str
    architecture: str
    weights: Path
    labels: list[str] | None = None
    input_spec: dict[str, Any] | None = None
    op_thresholds: list[float] | None = None
    cam_layer: str | None = None
    autoencoder: str | None = None
    version: str | None = None
    batch_size: int = 4
    max_batch_delay_ms: int = 20
    workers: int = 1
    torch_threads: int | None = None
    onnx: bool = True
    stream: bool = False
    warm_up: bool = True
    caps: dict[str, int] = field(default_factory=dict)
    semantic: dict[str, Any] | None = None


_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "kind": (str,), "architecture": (str,), "weights": (str,), "labels": (list,),
    "input_spec": (dict,), "op_thresholds": (list,), "cam_layer": (str,), "autoencoder": (str,),
    "version": (str, int, float), "batch_size": (int,), "max_batch_delay_ms": (int,), "workers": (int,),
    "torch_threads": (int,), "onnx": (bool,), "stream": (bool,), "warm_up": (bool,),
    "caps": (dict,), "semantic": (dict,),
}
SEMANTIC_FIELDS: dict[str, tuple[type, ...]] = {"layer": (str,), "concepts": (str, dict), "n": (int,),
                                                 "seed": (int,)}
CONCEPT_SETS = ("phantom",)
# Users' annotated data, as cxrexplain-eval reads it: images, and masks (DIR/<concept>/<image>.png) or boxes.
CONCEPT_FOLDER_KEYS = ("images", "masks", "boxes")
DEFAULT_DISSECTION_N = 200


def _check_semantic(where: str, raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """A ``semantic`` field (see :mod:`export.dissection_table`): its keys, their types and the concepts, with
    a folder's paths resolved against the recipe's folder."""
    unknown = set(raw) - set(SEMANTIC_FIELDS)
    if unknown:
        raise RecipeError(f"{where}: semantic has unknown key(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(SEMANTIC_FIELDS)}")
    for key in ("layer", "concepts"):
        if key not in raw:
            raise RecipeError(f"{where}: semantic needs '{key}' (see export/dissection_table.py)")
    for key, value in raw.items():
        if not isinstance(value, SEMANTIC_FIELDS[key]) or isinstance(value, bool):
            names = " or ".join("mapping" if t is dict else t.__name__ for t in SEMANTIC_FIELDS[key])
            raise RecipeError(f"{where}: semantic.{key} must be {names}, got {type(value).__name__} ({value!r})")
    if raw.get("n", DEFAULT_DISSECTION_N) < 1:
        raise RecipeError(f"{where}: semantic.n must be at least 1, got {raw['n']}")
    concepts = raw["concepts"]
    if isinstance(concepts, str):
        if concepts not in CONCEPT_SETS:
            raise RecipeError(f"{where}: semantic.concepts must be one of {', '.join(CONCEPT_SETS)} or a mapping "
                              f"{{images: DIR, masks: DIR, boxes: CSV}}, got {concepts!r}")
        return raw
    unknown = set(concepts) - set(CONCEPT_FOLDER_KEYS)
    if unknown or "images" not in concepts or not {"masks", "boxes"} & set(concepts):
        raise RecipeError(f"{where}: semantic.concepts as a mapping takes images: DIR and masks: DIR "
                          "(DIR/<concept>/<image file name>.png) and/or boxes: CSV (NIH or RSNA), got "
                          f"{sorted(concepts)}")
    resolved = {}
    for key, value in concepts.items():
        path = (base / str(value)).resolve()
        if not path.exists():
            raise RecipeError(f"{where}: semantic.concepts.{key}: {path} does not exist")
        resolved[key] = path
    return {**raw, "concepts": resolved}


def _entry(raw: Any, index: int, base: Path) -> ModelEntry:
    where = f"models[{index}]"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a mapping, got {type(raw).__name__}")
    where = f"models[{index}] ({raw.get('name', '?')})"
    known = {f.name for f in fields(ModelEntry)}
    unknown = set(raw) - known
    if unknown:
        raise RecipeError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    for key in ("name", "kind", "architecture", "weights"):
        if key not in raw:
            raise RecipeError(f"{where}: missing required field '{key}'")
    for key, value in raw.items():
        if value is None:
            continue
        expected = _TYPES[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            names = " or ".join(t.__name__ for t in expected)
            raise RecipeError(f"{where}: field '{key}' must be {names}, got {type(value).__name__} ({value!r})")
    if raw["kind"] not in KINDS:
        raise RecipeError(f"{where}: kind must be one of {', '.join(KINDS)}, got {raw['kind']!r}")
    values = dict(raw)
    if raw.get("semantic") is not None:
        if raw["kind"] != "classifier":
            raise RecipeError(f"{where}: semantic applies to classifiers only")
        values["semantic"] = _check_semantic(where, raw["semantic"], base)
    values["weights"] = (base / raw["weights"]).resolve()
    if values.get("version") is not None:
        values["version"] = str(values["version"])
    return ModelEntry(**values)


def load_recipe(path: Path) -> list[ModelEntry]:
    """Parse and check a recipe; raises :class:`RecipeError` naming the offending entry and field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"recipe {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise RecipeError(f"recipe {path} needs a top-level 'models:' list")
    entries = [_entry(raw, i, path.parent) for i, raw in enumerate(data["models"])]
    names = [e.name for e in entries]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise RecipeError(f"duplicate model name(s): {', '.join(sorted(duplicates))}")
    by_name = {e.name: e for e in entries}
    for e in entries:
        if e.stream and e.kind != "classifier":
            raise RecipeError(f"{e.name}: stream applies to classifiers only (an autoencoder answers unary calls)")
        if e.stream and e.name + STREAM_SUFFIX in by_name:
            raise RecipeError(f"{e.name}: stream: true writes {e.name}{STREAM_SUFFIX}, which another entry is named")
        if e.autoencoder is not None:
            backing = by_name.get(e.autoencoder)
            if backing is None or backing.kind != "autoencoder":
                raise RecipeError(f"{e.name}: autoencoder {e.autoencoder!r} is not an autoencoder entry of the recipe")
    return entries
