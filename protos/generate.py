"""Regenerate the committed protobuf / gRPC stubs from the ``.proto`` files in this folder.

Usage::

    python protos/generate.py            # rewrite the committed stubs in place
    python protos/generate.py --check    # exit 1 when a committed stub differs from a fresh generation

Outputs:

- ``handlers/cxrexplain_serving/wire/explain_pb2.py`` (+ ``.pyi``): the server needs only the response payload;
- ``client/cxrexplain_client/_proto/{explain,inference,management}_pb2.py`` (+ ``.pyi``) and
  ``{inference,management}_pb2_grpc.py``: the SDK's stubs;
- ``options_schema.py`` from ``options.json`` (the request options: keys, types, choices, minimums, defaults,
  help, each method's own options) and ``options_schema_template.py`` (the code that parses and formats them),
  into the server's ``wire/``, the SDK's ``_proto/`` and the engine (``handlers/cxrexplain/``, which reads only
  the boolean words for method options: it may import nothing above it);
- README.md's option table, between the markers :data:`TABLE_BEGIN` and :data:`TABLE_END`.

``grpc_tools.protoc`` writes sibling imports as top-level modules (``import inference_pb2``); they are rewritten
to package-relative imports (``from . import inference_pb2``) so the stubs work once installed. Every file gets a
``# ruff: noqa`` first line: generated code is not linted. The generated code pins the protobuf runtime it
needs (``ValidateProtobufRuntimeVersion``) and the grpcio version (``GRPC_GENERATED_VERSION``); keep
``client/pyproject.toml`` in step after upgrading grpcio-tools.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pprint
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PROTOS = Path(__file__).resolve().parent
ROOT = PROTOS.parent
HANDLER_WIRE = ROOT / "handlers" / "cxrexplain_serving" / "wire"
CLIENT_PROTO = ROOT / "client" / "cxrexplain_client" / "_proto"
ENGINE = ROOT / "handlers" / "cxrexplain"
README = ROOT / "README.md"
OPTIONS_JSON = PROTOS / "options.json"
OPTIONS_TEMPLATE = PROTOS / "options_schema_template.py"
OPTIONS_MODULE = "options_schema.py"
TABLE_BEGIN = "<!-- option table: generated from protos/options.json by `python protos/generate.py` -->"
TABLE_END = "<!-- end of option table -->"

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


def load_options(path: Path = OPTIONS_JSON) -> dict[str, Any]:
    """The option table of ``options.json`` with each short key completed from the method option it ``sets``
    (type, choices, minimum, maximum; its default as the README's), so a short key cannot disagree with its method."""
    table = json.loads(path.read_text(encoding="utf-8"))
    table.pop("$comment", None)
    for option in table["options"]:
        if "sets" in option:
            method, _, name = option["sets"].partition(".")
            target = table["methods"][method][name]
            for field in ("type", "choices", "minimum", "maximum"):
                if field in target:
                    option.setdefault(field, target[field])
            if "default" in target:
                option.setdefault("doc_default", f"`{target['default']}`")
    return table


_PY_TYPES = {"int": "int", "float": "float", "bool": "bool", "text": "str", "media_type": "str",
             "float_pair": "tuple[float, float] | str", "list": "str | Sequence[str | int]"}


def _typed_dict(table: dict[str, Any]) -> str:
    lines = [
        "class ExplainOptions(TypedDict, total=False):",
        '    """The SDK\'s keyword options (generated from ``protos/options.json``); ``None`` sends nothing."""',
        "",
    ]
    for option in table["options"]:
        if option.get("sdk"):
            continue
        choices = option.get("choices")
        kind = (f"Literal[{', '.join(repr(c) for c in choices)}]" if option["type"] == "choice"
                else _PY_TYPES[option["type"]])
        lines += [f"    {option['key']}: {kind} | None", f'    """{option["help"]}"""']
    lines += [
        "    method_options: Mapping[str, Mapping[str, Any]] | None",
        '    """Each method\'s own options, ``{"gradcam": {"layer": "features.28"}}`` (see :data:`METHOD_OPTIONS`)."""',
    ]
    return "\n".join(lines)


def options_module(table: dict[str, Any]) -> str:
    """The source of ``options_schema.py``: the template with the table and ``ExplainOptions`` filled in."""
    template = OPTIONS_TEMPLATE.read_text(encoding="utf-8")
    begin, end = "# <generated>\n", "# </generated>\n"
    head, rest = template.split(begin)
    _, tail = rest.split(end)
    data = pprint.pformat(table, width=110, sort_dicts=False)
    body = f"_TABLE: dict[str, Any] = {data}\n\n\n{_typed_dict(table)}\n\n\n"
    return HEADER + head + begin + body + end + tail


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _values(option: dict[str, Any]) -> str:
    if option["type"] == "choice":
        return " | ".join(f"`{c}`" for c in option["choices"])
    if option["type"] == "media_type":
        return " | ".join(f"`{c}`" for c in option["choices"]) + f"; {option['help']}"
    kind = {"int": "integer", "float": "number", "bool": "`true` | `false`"}.get(option["type"])
    text = option["help"] if kind is None else f"{kind}: {option['help']}"
    if "minimum" in option and "maximum" in option:
        text += f", {option['minimum']} to {option['maximum']}"
    elif "minimum" in option:
        text += f", at least {option['minimum']}"
    elif "maximum" in option:
        text += f", at most {option['maximum']}"
    if "sets" in option:
        text += f" (sets `{option['sets']}`)"
    return text


def _default(option: dict[str, Any]) -> str:
    if "default" in option:
        return f"`{option['default']}`"
    return option.get("doc_default", "—")


def options_table(table: dict[str, Any]) -> str:
    """README.md's option table: every request option, then every method's own options
    (``<method>.<option>``), rendered from the table; tests check README.md holds exactly this."""
    lines = [TABLE_BEGIN, "", "| option | values | default |", "| --- | --- | --- |"]
    for option in table["options"]:
        if option["key"] == "methods":
            option = {**option, "help": ", ".join(f"`{m}`" for m in table["methods"]) + " (comma list)"}
        lines.append(f"| `{option['key']}` | {_cell(_values(option))} | {_cell(_default(option))} |")
    lines += ["", "| method option | values | default |", "| --- | --- | --- |"]
    for method, options in table["methods"].items():
        for name, option in options.items():
            lines.append(f"| `{method}.{name}` | {_cell(_values(option))} | {_cell(_default(option))} |")
    lines += ["", TABLE_END]
    return "\n".join(lines)


def readme_with_table(readme: str, table: dict[str, Any]) -> str:
    """``readme`` with the text between the table markers replaced by :func:`options_table`."""
    start, stop = readme.find(TABLE_BEGIN), readme.find(TABLE_END)
    if start < 0 or stop < start:
        raise SystemExit(f"README.md lacks the markers {TABLE_BEGIN!r} ... {TABLE_END!r}")
    return readme[:start] + options_table(table) + readme[stop + len(TABLE_END):]


def generate(
    handler_out: Path = HANDLER_WIRE, client_out: Path = CLIENT_PROTO, engine_out: Path = ENGINE
) -> list[Path]:
    """Generate every stub into the output folders.

    Parameters
    ----------
    handler_out, client_out, engine_out
        Target folders (the committed locations by default; tests pass temporary folders). The engine gets
        only ``options_schema.py``, which the serving layer reads too; the handler folder only the payload.

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
    module = options_module(load_options())
    for out in (client_out, engine_out):  # the server reads the engine's copy
        out.mkdir(parents=True, exist_ok=True)
        (out / OPTIONS_MODULE).write_text(module, encoding="utf-8")
        written.append(out / OPTIONS_MODULE)
    return written


_COMMITTED = {"handler": HANDLER_WIRE, "client": CLIENT_PROTO, "engine": ENGINE}


def check() -> list[str]:
    """Names of committed stubs that differ from (or are missing next to) a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(*(Path(tmp) / name for name in _COMMITTED))
        stale = []
        for path in fresh:
            committed = _COMMITTED[path.parent.name] / path.name
            if not committed.exists() or committed.read_bytes() != path.read_bytes():
                stale.append(str(committed.relative_to(ROOT)))
        readme = README.read_text(encoding="utf-8")
        if readme_with_table(readme, load_options()) != readme:
            stale.append(README.name)
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
    README.write_text(readme_with_table(README.read_text(encoding="utf-8"), load_options()), encoding="utf-8")
    print(README.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
