"""Regenerate the committed protobuf / gRPC stubs from the ``.proto`` files in this folder.

Usage::

    python protos/generate.py            # rewrite the committed stubs in place
    python protos/generate.py --check    # exit 1 when a committed stub differs from a fresh generation

Outputs:

- ``handlers/cxrexplain_serving/wire/explain_pb2.py`` (+ ``.pyi``): the server needs only the response payload;
- ``client/cxrexplain_client/_proto/{explain,inference,management}_pb2.py`` (+ ``.pyi``) and
  ``{inference,management}_pb2_grpc.py``: the SDK's stubs.

``grpc_tools.protoc`` writes sibling imports as top-level modules (``import inference_pb2``); they are rewritten
to package-relative imports (``from . import inference_pb2``) so the stubs work once installed. Every file gets a
``# ruff: noqa`` first line: generated code is not linted. The generated code pins the protobuf runtime it
needs (``ValidateProtobufRuntimeVersion``) and the grpcio version (``GRPC_GENERATED_VERSION``); keep
``client/pyproject.toml`` in step after upgrading grpcio-tools.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTOS = Path(__file__).resolve().parent
ROOT = PROTOS.parent
HANDLER_WIRE = ROOT / "handlers" / "cxrexplain_serving" / "wire"
CLIENT_PROTO = ROOT / "client" / "cxrexplain_client" / "_proto"

# (proto file, also generate gRPC service stubs)
CLIENT_PROTOS = (("explain.proto", False), ("inference.proto", True), ("management.proto", True))
HANDLER_PROTOS = (("explain.proto", False),)

HEADER = "# ruff: noqa\n"
_SIBLING_IMPORT = re.compile(r"^import (explain_pb2|inference_pb2|management_pb2) as (\w+)$", re.MULTILINE)


def _include_dirs() -> list[str]:
    """Folders protoc searches: ours, the well-known types shipped with grpc_tools, googleapis-common-protos."""
    grpc_tools = importlib.util.find_spec("grpc_tools")
    rpc = importlib.util.find_spec("google.rpc")
    if grpc_tools is None or grpc_tools.origin is None or rpc is None or not rpc.submodule_search_locations:
        raise SystemExit("generate.py needs grpcio-tools and googleapis-common-protos installed")
    well_known = Path(grpc_tools.origin).parent / "_proto"
    googleapis_root = Path(list(rpc.submodule_search_locations)[0]).parent.parent  # .../site-packages
    return [str(PROTOS), str(well_known), str(googleapis_root)]


def _protoc(proto: str, out: Path, grpc: bool) -> None:
    args = [sys.executable, "-m", "grpc_tools.protoc"]
    args += [f"-I{d}" for d in _include_dirs()]
    args += [f"--python_out={out}", f"--pyi_out={out}"]
    if grpc:
        args.append(f"--grpc_python_out={out}")
    args.append(str(PROTOS / proto))
    subprocess.run(args, check=True)


def _postprocess(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    text = _SIBLING_IMPORT.sub(r"from . import \1 as \2", text)
    if not text.startswith(HEADER):
        text = HEADER + text
    path.write_text(text, encoding="utf-8")


def generate(handler_out: Path = HANDLER_WIRE, client_out: Path = CLIENT_PROTO) -> list[Path]:
    """Generate every stub into the two output folders.

    Parameters
    ----------
    handler_out, client_out
        Target folders (the committed locations by default; tests pass temporary folders).

    Returns
    -------
    list of Path
        The files written, relative names first by folder.
    """
    written: list[Path] = []
    for protos, out in ((HANDLER_PROTOS, handler_out), (CLIENT_PROTOS, client_out)):
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            for proto, grpc in protos:
                _protoc(proto, Path(tmp), grpc)
            for produced in sorted(Path(tmp).iterdir()):
                _postprocess(produced)
                shutil.copyfile(produced, out / produced.name)
                written.append(out / produced.name)
    return written


def check() -> list[str]:
    """Names of committed stubs that differ from (or are missing next to) a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp) / "handler", Path(tmp) / "client")
        stale = []
        for path in fresh:
            committed = (HANDLER_WIRE if path.parent.name == "handler" else CLIENT_PROTO) / path.name
            if not committed.exists() or committed.read_bytes() != path.read_bytes():
                stale.append(str(committed.relative_to(ROOT)))
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = check()
        for name in stale:
            print(f"stale: {name} (run python protos/generate.py)")
        return 1 if stale else 0
    for path in generate():
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
