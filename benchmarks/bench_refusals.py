"""Time and worker memory to refusal: the hostile corpus's handler-level cases against a real TorchServe.

``python -m benchmarks.bench_refusals [--store model_store] [--model NAME] [--repeats 3] [--all] [--json out.json]``

The cases are those of ``tests/reliability/test_hostile.py``, declared once in :mod:`cxrexplain_lab.hostile`
(and sent by :mod:`cxrexplain_lab.hostile_probe`): the issue's measured list first (``steps=6000``,
``steps=1000000``, the 7000 x 7000 PNG, the deflated 16384 x 16384 DICOM), then every other handler-level
refusal and accepted large decode of the corpus (``--all`` adds the option cases generated from the schema).
Each runs over REST and gRPC ``--repeats`` times, one at a time: the time is the client's, from sending the
request to reading the refusal (median); the memory is the worker's peak growth over its RSS before the case
(``VmHWM`` after ``clear_refs``; largest of the repeats), with the worker started with
``MALLOC_MMAP_THRESHOLD_=65536`` so each case's peak is its own.

``--store`` runs against existing archives (``make archives`` builds the demo's in ``model_store``; the store is
only read, the server's state lives in a temporary run folder); without it a store like the demo's is built
with random weights (``densenet_small`` at 96 px with an autoencoder: refusals do not depend on the weights).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml

import cxrexplain
from cxrexplain.spec import unit_spec
from cxrexplain_lab import hostile
from cxrexplain_lab.hostile_probe import MEASURING_ENV, Probe, problems
from export.launcher import Ports, TorchServe

from . import common

log = logging.getLogger("benchmarks.refusals")
MEASURED = ("steps=6000 (integrated gradients)", "steps=1000000 (integrated gradients)",
            "png 7000 x 7000 (49 MP, over the 40 MP cap)", "deflated dicom 16384 x 16384")
DEMO_LABELS = ["Cardiomegaly", "Nodule", "Mass", "Effusion", "Pneumothorax"]


def build_store(root: Path) -> Path:
    """A store like the demo's (``export/demo_recipe.yaml``), random weights, built by the real exporter."""
    from export import cli as export_cli

    spec = unit_spec(1, 96)
    cxrexplain.save_classifier(cxrexplain.load_classifier("densenet_small", labels=DEMO_LABELS, input_spec=spec),
                               root / "weights" / "clf.pt")
    cxrexplain.save_autoencoder(cxrexplain.load_autoencoder("resnet_ae_small", input_spec=spec),
                                root / "weights" / "ae.pt")
    recipe = {"models": [
        {"name": "cxr-densenet", "kind": "classifier", "architecture": "densenet_small", "weights": "weights/clf.pt",
         "autoencoder": "cxr-ae", "version": "1.0", "batch_size": 4, "max_batch_delay_ms": 20},
        {"name": "cxr-ae", "kind": "autoencoder", "architecture": "resnet_ae_small", "weights": "weights/ae.pt"}]}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    store = root / "model_store"
    if export_cli.main([str(root / "recipe.yaml"), "--store", str(store)]) != 0:
        raise RuntimeError("the exporter failed; see its log above")
    return store


def classifier_in(store: Path) -> str:
    """The first classifier archive of a store (not an autoencoder, not a streaming twin)."""
    names = [p.stem for p in sorted(store.glob("*.mar")) if not p.stem.endswith(("-ae", "-stream"))]
    if not names:
        raise SystemExit(f"no classifier archive in {store}: run `make archives`, or leave --store out")
    return names[0]


def selected(everything: bool) -> list[hostile.Case]:
    """The measured list first, then the other handler-level cases (and accepted decodes) of the corpus."""
    pool = hostile.body_cases() + hostile.request_cases() + (hostile.option_cases() if everything else [])
    named = {case.name: case for case in pool}
    measured = [c for c in pool if any(e is not None and e.budget_mb is not None for e in (c.rest, c.grpc))]
    rest = [c for c in measured if c.name not in MEASURED]
    return [named[name] for name in MEASURED] + rest


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-refusals-") as tmp:
        store = Path(args.store).resolve() if args.store else build_store(Path(tmp))
        model = args.model or classifier_in(store)
        env = dict(MEASURING_ENV)
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)  # the workers inherit it from the frontend
        try:
            server = TorchServe(store, Path(tmp) / "run", ports=Ports.free(), models=f"{model}.mar").start()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        rows = []
        try:
            with Probe(server, model) as probe:
                for transport in hostile.TRANSPORTS:  # warm both paths: the first request of each is not a case
                    probe.good(transport)
                for case in selected(args.all):
                    for transport, expect in ((t, case.expect(t)) for t in hostile.TRANSPORTS):
                        if expect is None:
                            continue
                        answers = [probe.send(case, transport, expect) for _ in range(args.repeats)]
                        found = [p for a in answers for p in problems(case, transport, expect, a)]
                        last = answers[-1]
                        rows.append({
                            "case": case.name, "transport": transport, "status": last.status,
                            "type": last.error_type or "", "seconds": [a.seconds for a in answers],
                            "growth_mb": [a.growth_mb for a in answers], "budget_mb": expect.budget_mb,
                            "as_expected": not found, "problems": found})
                        log.info("%s over %s: %s %s", case.name, transport, last.status, last.error_type)
        finally:
            server.stop()
    return {"machine": common.machine(), "store": str(args.store or "built (random weights, 96 px)"),
            "model": model, "repeats": args.repeats, "rows": rows}


def markdown(results: dict[str, Any], command: str) -> str:
    info = results["machine"]
    out = [common.header("Time and worker memory to refusal (hostile corpus)", command, info),
           f"Model `{results['model']}` from {results['store']}; {results['repeats']} repeat(s) per case and "
           "transport, one request at a time. Time: the client's, median; memory: the worker's peak growth over "
           "its RSS before the case, largest repeat. A time includes the frontend's wait for a batch to fill "
           "(the archive's max_batch_delay_ms; 20 ms in the demo recipe). The machine is shared: times are "
           "noisy.\n"]
    rows = []
    for r in results["rows"]:
        growth = [g for g in r["growth_mb"] if g is not None]
        rows.append([r["case"], r["transport"], f"{r['status']} {r['type']}".strip(),
                     statistics.median(r["seconds"]) * 1e3, max(growth) if growth else "-",
                     r["budget_mb"] if r["budget_mb"] is not None else "-", "yes" if r["as_expected"] else "NO"])
    out.append(common.table(["case", "transport", "answer", "time to answer (ms)", "worker peak growth (MB)",
                             "budget (MB)", "as expected"], rows))
    wrong = [f"- {r['case']} over {r['transport']}: {'; '.join(r['problems'])}" for r in results["rows"]
             if not r["as_expected"]]
    if wrong:
        out.append("\nNot as expected:\n" + "\n".join(wrong))
    return "\n".join(out) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_refusals",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--store", help="a model store to serve (read only), e.g. model_store after `make archives`")
    p.add_argument("--model", help="the classifier archive's name (default: the store's first classifier)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--all", action="store_true", help="also every option case generated from the schema")
    p.add_argument("--json", help="also write every figure here")
    p.add_argument("--max-load", type=float, default=0.0,
                   help="wait (up to 30 min) for the 1-min load average to fall below this before starting")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the raw figures (the Markdown goes to stdout)."""
    return common.report(parse(argv), run, markdown, quiet=common.SERVER_CHATTER)


if __name__ == "__main__":
    main()
