"""``cxrexplain-export``: recipe -> bundles -> ONNX (parity-checked) -> .mar archives + manifest in the store."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from cxrexplain.errors import WeightsError
from cxrexplain.models import load_autoencoder, load_classifier, save_autoencoder, save_classifier
from cxrexplain.spec import InputSpec

from .archive import (
    AUTOENCODER_WEIGHTS,
    CLASSIFIER_WEIGHTS,
    DISSECTION_TABLE,
    ONNX_MODEL,
    SERVE_CONFIG,
    build_mar,
    sha256,
    stage_packages,
    write_json,
)
from .dissection_table import dissection_table
from .onnx_export import ParityError, export_onnx
from .recipe import STREAM_SUFFIX, ModelEntry, RecipeError, load_recipe

log = logging.getLogger("cxrexplain.export")

INTENDED_USE = ("Research and engineering use: explanations of a chest X-ray classifier's findings. "
                "Not for diagnostic use.")


def _load_autoencoder(entry: ModelEntry) -> Any:
    spec = InputSpec.from_dict(entry.input_spec) if entry.input_spec else None
    return load_autoencoder(entry.architecture, entry.weights, input_spec=spec)


RESPONSE_TIMEOUT_S = 900  # above the worst batch the default caps allow (see model_store/config.properties)


def _model_config(entry: ModelEntry, response_timeout: int) -> dict[str, Any]:
    """TorchServe per-archive settings (torch-model-archiver --config-file): dynamic batching and workers."""
    return {"minWorkers": entry.workers, "maxWorkers": entry.workers, "batchSize": entry.batch_size,
            "maxBatchDelay": entry.max_batch_delay_ms, "responseTimeout": response_timeout}


def _stream_config(entry: ModelEntry, response_timeout: int) -> dict[str, Any]:
    """The streaming twin's settings: sequence batching, without which TorchServe 0.12 fails every
    ``StreamPredictions2`` call with UNKNOWN. Each stream holds one of ``maxNumSequence`` slots until it has
    been idle ``sequenceMaxIdleMSec``, and an idle sequence blocks one of the ``batchSize`` polling threads as
    long: hence a short idle time. (``continuousBatching`` would drop the stream after its first part in 0.12.)
    """
    return {**_model_config(entry, response_timeout), "sequenceBatching": True, "sequenceMaxIdleMSec": 200,
            "maxNumSequence": 32, "maxSequenceJobQueueSize": 4}


def export_entry(entry: ModelEntry, by_name: dict[str, ModelEntry], store: Path) -> dict[str, Any]:
    """Build one archive; returns its manifest record."""
    with tempfile.TemporaryDirectory(prefix="cxrexplain-stage-") as tmp:
        staging = Path(tmp) / "files"
        staging.mkdir()
        stage_packages(staging)
        record: dict[str, Any] = {"name": entry.name, "kind": entry.kind, "architecture": entry.architecture}
        serve: dict[str, Any] = {"name": entry.name, "kind": entry.kind, "caps": entry.caps,
                                 "intended_use": INTENDED_USE}
        if entry.torch_threads:
            serve["torch_threads"] = entry.torch_threads  # read by the handler's initialize
        if not entry.warm_up:
            serve["warm_up"] = False  # the handler warms up unless told not to
        if entry.kind == "classifier":
            bundle = load_classifier(
                entry.architecture, weights=entry.weights, labels=entry.labels,
                input_spec=InputSpec.from_dict(entry.input_spec) if entry.input_spec else None,
                op_thresholds=entry.op_thresholds, cam_layer=entry.cam_layer, version=entry.version,
            )
            save_classifier(bundle, staging / CLASSIFIER_WEIGHTS)
            record.update(version=bundle.version, weights_sha256=bundle.sha256, labels=bundle.labels,
                          input_spec=bundle.input_spec.to_dict(), op_thresholds=bundle.op_thresholds)
            if entry.autoencoder:
                ae = _load_autoencoder(by_name[entry.autoencoder])
                save_autoencoder(ae, staging / AUTOENCODER_WEIGHTS)
                record["autoencoder"] = {"name": entry.autoencoder, "weights_sha256": ae.sha256}
                # Named, so a worker that finds the file missing says so (503 for latent_shift) instead of
                # serving as if the archive never had one.
                serve["autoencoder"] = {"weights": AUTOENCODER_WEIGHTS, "architecture": ae.architecture}
            if entry.semantic:
                table = dissection_table(bundle, entry.semantic, entry.name)
                write_json(staging / DISSECTION_TABLE, table.to_dict())
                serve["semantic"] = {"table": DISSECTION_TABLE}  # the handler loads it: `semantic` serves
                record["semantic"] = {"layer": table.layer, "units": len(table.concepts),
                                      "detectors": sum(table.detectors), "data": table.data}
            if entry.onnx:
                record["onnx_max_abs_diff"] = export_onnx(bundle, staging / ONNX_MODEL)
            version = bundle.version
        else:
            ae = _load_autoencoder(entry)
            save_autoencoder(ae, staging / AUTOENCODER_WEIGHTS)
            version = entry.version or ae.version
            record.update(version=version, weights_sha256=ae.sha256, input_spec=ae.input_spec.to_dict())
        serve["version"] = version
        write_json(staging / SERVE_CONFIG, serve)
        config = Path(tmp) / "model-config.yaml"
        config.write_text(yaml.safe_dump(_model_config(entry, response_timeout=RESPONSE_TIMEOUT_S)))
        mar = build_mar(entry.name, version, staging, store, config)
        record.update(archive=mar.name, archive_sha256=sha256(mar))
        if entry.stream and entry.kind == "classifier":
            config.write_text(yaml.safe_dump(_stream_config(entry, response_timeout=RESPONSE_TIMEOUT_S)))
            twin = build_mar(entry.name + STREAM_SUFFIX, version, staging, store, config)
            record.update(stream_archive=twin.name, stream_archive_sha256=sha256(twin))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cxrexplain-export", description=__doc__)
    parser.add_argument("recipe", type=Path, help="YAML recipe (see export/recipe.py)")
    parser.add_argument("--store", type=Path, default=Path("model_store"), help="where the .mar files go")
    parser.add_argument("--only", nargs="*", help="export only these model names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        entries = load_recipe(args.recipe)
        by_name = {e.name: e for e in entries}
        chosen = [e for e in entries if not args.only or e.name in args.only]
        records = []
        for entry in chosen:
            log.info("exporting %s (%s, %s)", entry.name, entry.kind, entry.architecture)
            records.append(export_entry(entry, by_name, args.store))
            log.info("  -> %s", args.store / records[-1]["archive"])
    except (RecipeError, WeightsError, ParityError) as exc:
        print(f"cxrexplain-export: {exc}", file=sys.stderr)
        return 2
    write_manifest(args.store / "manifest.json", records)
    return 0


def write_manifest(path: Path, records: list[dict[str, Any]]) -> None:
    """Merge ``records`` into the store's manifest by model name (a partial export keeps the others)."""
    existing = json.loads(path.read_text())["models"] if path.exists() else []
    fresh = {r["name"] for r in records}
    write_json(path, {"models": [r for r in existing if r["name"] not in fresh] + records})


if __name__ == "__main__":
    sys.exit(main())
