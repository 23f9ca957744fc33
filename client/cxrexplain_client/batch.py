"""Many images through one client: bounded concurrency, a progress bar, each result saved into its own
folder, and a summary table. One input's failure is recorded and the others go on."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from .errors import CxrExplainClientError
from .inputs import InputImage
from .results import Explanation


@dataclass
class Outcome:
    """What became of one input: its explanation and the files written, or why it failed."""

    item: InputImage
    folder: Path
    explanation: Explanation | None = None
    files: list[Path] = field(default_factory=list)
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.explanation is not None

    @property
    def reason(self) -> str:
        """The failure in one line: the error's type and message."""
        if self.error is None:
            return ""
        return f"{type(self.error).__name__}: {self.error}".replace("\n", " ")


def _one(
    item: InputImage, folder: Path, explain: Callable[[Path], Explanation], alpha: float
) -> Outcome:
    outcome = Outcome(item, folder)
    if item.error:
        outcome.error = CxrExplainClientError(item.error)
        return outcome
    try:
        outcome.explanation = explain(item.path)
        outcome.files = outcome.explanation.save(folder, item.path, alpha=alpha)
    # One input must never stop the others: whatever fails here (the server's refusal, an image the SDK
    # cannot show, a folder it cannot write) is this input's outcome, reported with its type.
    except Exception as exc:  # noqa: BLE001
        outcome.error = exc
    return outcome


def run(
    items: Sequence[InputImage],
    folders: Sequence[Path],
    explain: Callable[[Path], Explanation],
    *,
    concurrency: int = 4,
    alpha: float = 0.6,
    progress: bool = True,
) -> list[Outcome]:
    """Explain each input with ``explain`` (a thread-safe call of one client) and save it into its folder.

    Parameters
    ----------
    items, folders
        The inputs and, for each, the folder its files go to.
    explain
        Path -> Explanation; the SDK client's calls are thread-safe, so one client serves every thread.
    concurrency
        Most requests in flight at once (the server queues and batches them).
    alpha
        Overlay opacity.
    progress
        Show a bar on stderr.

    Returns
    -------
    list[Outcome]
        In the order of ``items``.
    """
    if concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {concurrency}")
    outcomes: list[Outcome | None] = [None] * len(items)
    with (
        ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cxrexplain") as pool,
        tqdm(total=len(items), file=sys.stderr, disable=not progress, unit="image", leave=False) as bar,
    ):
        futures = {pool.submit(_one, item, folder, explain, alpha): i
                   for i, (item, folder) in enumerate(zip(items, folders, strict=True))}
        for future in as_completed(futures):
            outcomes[futures[future]] = future.result()
            bar.update(1)
    return [o for o in outcomes if o is not None]


def _findings(outcome: Outcome) -> str:
    if outcome.explanation is None:
        return "-"
    positive = sorted(outcome.explanation.positive, key=lambda f: -f.probability)
    return ", ".join(f"{f.label} {f.probability:.2f}" for f in positive) or "none positive"


def print_table(outcomes: Sequence[Outcome], stream: TextIO) -> None:
    """One line per input: the file as given, its output folder, its positive findings, ok or the error."""
    rows = [("file", "output", "findings", "status")]
    rows += [(str(o.item.path), o.item.name, _findings(o), "ok" if o.ok else "FAILED") for o in outcomes]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)]
        stream.write("  ".join([*cells, row[3]]) + "\n")
    failed = [o for o in outcomes if not o.ok]
    stream.write(f"{len(outcomes) - len(failed)} of {len(outcomes)} images explained\n")
