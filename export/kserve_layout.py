"""Lay a model store out the way KServe's TorchServe runtimes read it from a ``storageUri``.

KServe mounts (``pvc://``) or downloads (``s3://``, ``gs://``) the storage URI at ``/mnt/models``; TorchServe
runtimes then start with ``--ts-config /mnt/models/config/config.properties`` and
``--model-store /mnt/models/model-store``. This module writes that tree::

    OUT/config/config.properties   derived from model_store/config.properties (addresses, paths for the pod)
    OUT/config/metrics.yaml        copied: TorchServe emits the handler's metrics only when declared there
    OUT/model-store/*.mar          the archives built by ``cxrexplain-export``

Usage: ``python -m export.kserve_layout --store model_store --out build/kserve`` and copy ``OUT`` to the
volume the InferenceService's ``storageUri`` points at (deploy/kserve/README.md).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from .launcher import read_properties

log = logging.getLogger(__name__)

# Where KServe puts the storage URI's contents inside the predictor container.
MOUNT = "/mnt/models"
CONFIG_DIR = "config"
STORE_DIR = "model-store"

# Keys that make a store unsafe to expose: dropped whatever the source file says.
UNSAFE_KEYS = ("disable_token_authorization", "enable_envvars_config")


class LayoutError(Exception):
    """The source store cannot be laid out for KServe (missing archives or configuration)."""


def kserve_properties(source: dict[str, str], mount: str = MOUNT) -> dict[str, str]:
    """Derive the pod's ``config.properties`` from the store's own settings.

    Inference (REST, gRPC) and metrics listen on every interface of the pod, so the predictor's Service and
    Prometheus reach them; management stays on the pod's loopback (it can load and scale models); token
    authorization stays on; paths point into ``mount``.

    Parameters
    ----------
    source
        The key/value pairs of ``model_store/config.properties``.
    mount
        Where KServe mounts the storage URI (``/mnt/models``).

    Returns
    -------
    dict[str, str]
        The properties in the source's order, overridden keys in place, new keys appended.
    """
    props = {k: v for k, v in source.items() if k not in UNSAFE_KEYS}
    store = f"{mount}/{STORE_DIR}"
    props.update(
        inference_address="http://0.0.0.0:8080",
        management_address="http://127.0.0.1:8081",
        metrics_address="http://0.0.0.0:8082",
        grpc_inference_address="0.0.0.0",
        grpc_management_address="127.0.0.1",
        grpc_inference_port="7070",
        grpc_management_port="7071",
        model_store=store,
        load_models="all",
        enable_model_api="false",
        # The mount is read-only and models come from it alone; never from a URL at run time.
        allowed_urls=f"file://{store}/[^/]+\\\\.mar",
        # Configuration only from this file, not from TS_* variables a pod spec could inject.
        enable_envvars_config="false",
        # The image carries the dependencies; no pip install at model load inside the pod.
        install_py_dep_per_model="false",
    )
    if "metrics_config" in source:
        props["metrics_config"] = f"{mount}/{CONFIG_DIR}/{Path(source['metrics_config']).name}"
    return props


def write_layout(store: Path, out: Path, mount: str = MOUNT) -> list[Path]:
    """Write ``out/config/config.properties`` (+ metrics YAML) and ``out/model-store/*.mar`` from ``store``.

    Parameters
    ----------
    store
        A model store built by ``cxrexplain-export``: ``config.properties``, ``metrics.yaml`` and ``*.mar``.
    out
        The folder to fill (created; files of the same name are replaced, others left alone).
    mount
        Where KServe mounts the storage URI inside the pod.

    Returns
    -------
    list[Path]
        Every file written.

    Raises
    ------
    LayoutError
        The store has no ``config.properties``, no archive, or names a metrics file it does not contain.
    """
    config = store / "config.properties"
    if not config.is_file():
        raise LayoutError(f"{config} not found: pass --store the folder holding config.properties and the "
                          ".mar files")
    archives = sorted(store.glob("*.mar"))
    if not archives:
        raise LayoutError(f"no .mar archive in {store}: build them first with "
                          f"`cxrexplain-export RECIPE --store {store}`")
    source = read_properties(config)
    props = kserve_properties(source, mount)

    (out / CONFIG_DIR).mkdir(parents=True, exist_ok=True)
    (out / STORE_DIR).mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if "metrics_config" in source:
        metrics = store / source["metrics_config"]
        if not metrics.is_file():
            raise LayoutError(f"config.properties names metrics_config={source['metrics_config']} but "
                              f"{metrics} is missing: handler metrics would not reach Prometheus")
        written.append(Path(shutil.copy2(metrics, out / CONFIG_DIR / metrics.name)))
    header = (f"# Generated by `python -m export.kserve_layout` from {config.name} for KServe "
              f"(storage URI mounted at {mount}). Edit the source and regenerate.\n")
    target = out / CONFIG_DIR / "config.properties"
    target.write_text(header + "".join(f"{k}={v}\n" for k, v in props.items()))
    written.append(target)
    for archive in archives:
        written.append(Path(shutil.copy2(archive, out / STORE_DIR / archive.name)))
    log.info("KServe layout in %s: %d archive(s)", out, len(archives))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.kserve_layout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("model_store"), help="the built model store")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder to write config/ and model-store/ into")
    parser.add_argument("--mount", default=MOUNT,
                        help="where KServe mounts the storage URI (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        files = write_layout(args.store, args.out, args.mount)
    except LayoutError as exc:
        log.error("%s", exc)
        return 2
    for path in files:
        log.info("  %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
