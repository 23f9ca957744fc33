"""Check KServe manifests against the models of the ``kserve`` Python SDK, offline (no cluster).

Runs in its own venv (``pip install kserve==0.21.0``; the SDK's protobuf / grpcio pins conflict with the
project's), see tests/export/test_deploy.py::kserve_python. Usage::

    python scripts/kserve_validate.py deploy/kserve/serving-runtime.yaml deploy/kserve/inference-service.yaml

Every field of every document is checked recursively against the SDK's generated model classes
(``kserve.models.V1beta1InferenceService``, ``V1alpha1ServingRuntime``; nested types via each class's
``openapi_types`` and ``attribute_map``) and the Kubernetes client models for core types (``V1Container``,
``V1ResourceRequirements``, ``V1ObjectMeta``, ...): an unknown field name, a list where an object belongs or a
primitive of the wrong type is an error. Kubernetes models that are pydantic models (kubernetes >= 35) are
also validated as a whole, which adds their required fields and field types. Prints JSON
``{"ok": bool, "errors": [...], "fields": n}`` and exits 1 when there are errors.
"""

from __future__ import annotations

import json
import re
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import kserve.models
import kubernetes.client
import yaml

# (apiVersion, kind) -> SDK model class name.
KINDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
}

# Both generator styles: kserve's "list[X]" / "dict(str, X)" and kubernetes' "List[X]" / "Dict[str, X]".
LIST = re.compile(r"^[Ll]ist\[(.+)\]$")
DICT = re.compile(r"^(?:dict\(str, (.+)\)|Dict\[str, (.+)\])$")
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "date": (str,),
    "datetime": (str,),
    "object": (object,),  # int-or-string (ports), quantities, free-form JSON
}


def model_class(name: str) -> type | None:
    """The generated class called ``name``: KServe's models first, then the Kubernetes client's."""
    for module in (kserve.models, kubernetes.client):
        cls = getattr(module, name, None)
        if isinstance(cls, type) and hasattr(cls, "openapi_types"):
            return cls
    return None


class Checker:
    """Walk one document and collect errors as ``path: message`` strings."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.fields = 0
        self._validating = 0  # > 0 while inside a Kubernetes model that pydantic validates as a whole

    def check(self, value: Any, type_name: str, path: str) -> None:
        type_name = type_name.strip()
        if (match := LIST.match(type_name)) is not None:
            if not isinstance(value, list):
                self.errors.append(f"{path}: expected a list ({type_name}), got {type(value).__name__}")
                return
            for i, item in enumerate(value):
                self.check(item, match.group(1), f"{path}[{i}]")
            return
        if (match := DICT.match(type_name)) is not None:
            if not isinstance(value, dict):
                self.errors.append(f"{path}: expected a mapping ({type_name}), got {type(value).__name__}")
                return
            for key, item in value.items():
                self.check(item, match.group(1) or match.group(2), f"{path}.{key}")
            return
        if type_name in PRIMITIVES:
            allowed = PRIMITIVES[type_name]
            wrong_bool = isinstance(value, bool) and type_name in ("int", "float")
            if not isinstance(value, allowed) or wrong_bool:
                self.errors.append(f"{path}: expected {type_name}, got {type(value).__name__} ({value!r})")
            return
        cls = model_class(type_name)
        if cls is None:
            self.errors.append(f"{path}: the SDK has no model named {type_name}")
            return
        self.check_model(value, cls, path)

    def check_model(self, value: Any, cls: type, path: str) -> None:
        if not isinstance(value, dict):
            self.errors.append(f"{path}: expected an object ({cls.__name__}), got {type(value).__name__}")
            return
        validate = getattr(cls, "model_validate", None) if cls.__module__.startswith("kubernetes.") else None
        if validate is not None and not self._validating:
            try:  # once, at the outermost Kubernetes model: required fields, types, enums
                validate(value)
            except Exception as exc:  # pydantic.ValidationError
                for line in str(exc).splitlines()[1:]:
                    if line and not line.startswith(" "):
                        self.errors.append(f"{path}.{line}: {cls.__name__} validation failed")
        self._validating += validate is not None
        by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}  # type: ignore[attr-defined]
        for key, item in value.items():
            self.fields += 1
            attr = by_json.get(key)
            if attr is None:
                known = ", ".join(sorted(by_json))
                self.errors.append(f"{path}.{key}: unknown field of {cls.__name__} (known: {known})")
                continue
            self.check(item, cls.openapi_types[attr], f"{path}.{key}")  # type: ignore[attr-defined]
        self._validating -= validate is not None


def check_document(doc: Any, where: str) -> Checker:
    """Check one YAML document; ``where`` names it in the messages (file and index)."""
    checker = Checker()
    if not isinstance(doc, dict):
        checker.errors.append(f"{where}: a document must be a mapping")
        return checker
    key = (doc.get("apiVersion"), doc.get("kind"))
    class_name = KINDS.get(key)  # type: ignore[arg-type]
    if class_name is None:
        checker.errors.append(f"{where}: unsupported apiVersion/kind {key}; known: {sorted(KINDS)}")
        return checker
    cls = model_class(class_name)
    if cls is None:
        checker.errors.append(f"{where}: this kserve SDK has no {class_name}")
        return checker
    checker.check_model(doc, cls, f"{where}:{doc['kind']}")
    return checker


def main(argv: list[str]) -> int:
    if not argv:
        usage = "usage: kserve_validate.py MANIFEST.yaml ..."
        print(json.dumps({"ok": False, "errors": [usage], "fields": 0}))
        return 2
    errors: list[str] = []
    fields = 0
    documents = 0
    for name in argv:
        try:
            docs = [d for d in yaml.safe_load_all(Path(name).read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as exc:
            errors.append(f"{name}: cannot read: {exc}")
            continue
        for i, doc in enumerate(docs):
            checker = check_document(doc, f"{name}#{i}")
            errors.extend(checker.errors)
            fields += checker.fields
            documents += 1
    report = {"ok": not errors and documents > 0, "errors": errors, "fields": fields, "documents": documents,
              "kserve": version("kserve")}
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
