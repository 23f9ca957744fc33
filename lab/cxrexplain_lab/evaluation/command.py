"""What every subcommand of ``cxrexplain-eval`` shares: the session (arguments, the model, the data, the output
folder, a progress bar) and the shape of a subcommand (one module, one :class:`Subcommand`, registered in
:data:`cxrexplain_lab.evaluation.cli.SUBCOMMANDS`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from .data import EvalSet, load_folder, load_phantoms, parse_aliases
from .model import LocalModel, Model, load_model

T = TypeVar("T")


@dataclass
class Section:
    """What a subcommand produced: its part of ``summary.md`` and the files it wrote under ``--out``."""

    title: str
    markdown: str
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Subcommand:
    """One subcommand. ``run`` reads the session and writes its CSV and plots; ``needs_insides`` says it needs the
    model's parameters or activations (``report`` then skips it, saying why, against a server)."""

    name: str
    help: str
    run: Callable[[Session], Section]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    needs_insides: bool = True


class Session:
    """The parsed arguments, and the model and data they name, each loaded once and shared by the subcommands."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)

    @cached_property
    def model(self) -> Model:
        a = self.args
        labels = [s.strip() for s in a.labels.split(",") if s.strip()] if a.labels else None
        return load_model(a.architecture, a.weights, labels, autoencoder=a.autoencoder, device=a.device,
                          layer=a.layer, url=a.url, name=a.model, token_file=a.token_file)

    @cached_property
    def data(self) -> EvalSet:
        a = self.args
        if a.phantom:
            return load_phantoms(a.phantom, self.model.size, self.model.labels)
        if a.images is None:
            raise ValueError("name the data: --images DIR [--boxes CSV] [--masks DIR], or --phantom N")
        return load_folder(a.images, self.model.labels, a.boxes, a.masks, parse_aliases(a.alias))

    @property
    def methods(self) -> list[str]:
        methods = [m.strip() for m in self.args.methods.split(",") if m.strip()]
        if isinstance(self.model, LocalModel) and self.model.explainer.autoencoder is None:
            methods = [m for m in methods if m != "latent_shift"]  # needs --autoencoder
        return methods

    def progress(self, items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
        """A progress bar on a terminal (tqdm disables itself elsewhere) unless ``--quiet``."""
        return tqdm(items, desc=desc, total=total, disable=True if self.args.quiet else None, leave=False)

    def write_csv(self, name: str, header: list[str], rows: Iterable[Iterable[Any]]) -> Path:
        import csv

        path = self.out / name
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        return path
