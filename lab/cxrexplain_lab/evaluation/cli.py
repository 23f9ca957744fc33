"""``cxrexplain-eval``: the papers' evaluations of a classifier and its explanations, on users' data.

    cxrexplain-eval localize --weights clf.pt --images DIR --boxes BBox_List_2017.csv --out eval/
    cxrexplain-eval randomize --architecture densenet121 --weights w.pt --labels A,B --phantom 40 --out eval/
    cxrexplain-eval dissect --weights clf.pt --images DIR --masks MASKS --layer features.denseblock3 --out eval/
    cxrexplain-eval report --model cxr --url http://localhost:8080 --token-file key_file.json --images DIR ...

Each subcommand is one module exposing a :class:`~.command.Subcommand`, registered in :data:`SUBCOMMANDS`;
``report`` runs them all and writes ``summary.md``. Outputs go under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrexplain.errors import CxrExplainError

from . import concepts, dissect, localize, randomize, report
from .command import Session, Subcommand
from .data import DataError
from .model import NeedsInsides

# The registered subcommands, in the order ``report`` runs them. A new one is a module with a COMMAND, added here.
SUBCOMMANDS: list[Subcommand] = [localize.COMMAND, randomize.COMMAND, dissect.COMMAND, concepts.COMMAND]


def _common(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model: a bundle (weights + architecture + labels) or a served archive")
    model.add_argument("--weights", type=Path, help="classifier weights; a JSON sidecar beside them (foo.pt -> "
                       "foo.json) supplies architecture, labels and input spec")
    model.add_argument("--architecture", help="architecture name, as load_classifier takes it (densenet121, ...)")
    model.add_argument("--labels", help="comma-separated labels, one per output (default: the sidecar's)")
    model.add_argument("--autoencoder", type=Path, help="autoencoder weights, for latent_shift")
    model.add_argument("--model", help="the archive's name on a running server (with --url)")
    model.add_argument("--url", help="the server's inference URL (http://host:8080)")
    model.add_argument("--token-file", type=Path, help="TorchServe's key_file.json (else $CXREXPLAIN_TOKEN)")
    model.add_argument("--layer", help="layer by module name (features.denseblock4) for Grad-CAM and the unit "
                       "analyses; default: the CAM layer (CAM itself always reads the map its head pools)")
    model.add_argument("--device", help="cuda or cpu (default: CUDA when available)")
    data = parser.add_argument_group("data: a folder with boxes and/or masks, or phantoms")
    data.add_argument("--images", type=Path, help="folder of PNG/JPEG/DICOM images (searched recursively)")
    data.add_argument("--boxes", type=Path, help="NIH BBox_List_2017.csv or RSNA stage_2_train_labels.csv")
    data.add_argument("--masks", type=Path, help="folder laid out as DIR/<concept>/<image file name>.png")
    data.add_argument("--alias", action="append", default=[], metavar="CSV_LABEL=MODEL_LABEL",
                      help="map a label of the CSV or mask folder to the model's (default Infiltrate=Infiltration)")
    data.add_argument("--phantom", type=int, metavar="N", help="N held-out phantoms instead of a folder")
    parser.add_argument("--methods", default=",".join(localize.METHODS), help="comma-separated methods")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random map and the re-initializations")
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSVs, plots and summary.md")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser(commands: list[Subcommand] | None = None) -> argparse.ArgumentParser:
    commands = SUBCOMMANDS if commands is None else commands
    parser = argparse.ArgumentParser(prog="cxrexplain-eval", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        _common(p)
        command.add_arguments(p)
    p = sub.add_parser("report", help="every subcommand above, and summary.md")
    _common(p)
    for command in commands:
        command.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    session = Session(args)
    try:
        if args.command == "report":
            section = report.run_all(session, SUBCOMMANDS)
        else:
            command = next(c for c in SUBCOMMANDS if c.name == args.command)
            section = report.write_summary(session, [command.run(session)])
    except (NeedsInsides, DataError, CxrExplainError, ValueError, OSError) as exc:
        print(f"cxrexplain-eval {args.command}: error: {exc}", file=sys.stderr)
        return 2
    print(section.markdown)
    print(f"\nwrote {', '.join(str(f) for f in section.files)}", file=sys.stderr)
    return 0

