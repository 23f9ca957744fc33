"""``cxrexplain-eval report``: every registered subcommand on the same model and data, one ``summary.md``.

A subcommand that needs the model's insides is skipped against a server, with the reason in the summary.
"""

from __future__ import annotations

from collections.abc import Sequence

from .command import Section, Session, Subcommand
from .model import LocalModel


def write_summary(session: Session, sections: Sequence[Section]) -> Section:
    """``summary.md``: the data and model, what was skipped, then each section."""
    a = session.args
    model = f"`{a.model}` at {a.url}" if a.url else f"{a.architecture or 'from the sidecar'} `{a.weights}`"
    lines = ["# cxrexplain-eval", "", f"- model: {model}", f"- data: {session.data.source}",
             f"- methods: {', '.join(session.methods)}", "", session.data.problems.markdown(), ""]
    for section in sections:
        lines += [f"## {section.title}", "", section.markdown, ""]
    path = session.out / "summary.md"
    path.write_text("\n".join(lines))
    return Section("Summary", path.read_text(), [path, *(f for s in sections for f in s.files)])


def run_all(session: Session, commands: Sequence[Subcommand]) -> Section:
    sections = []
    for command in commands:
        if command.needs_insides and not isinstance(session.model, LocalModel):
            sections.append(Section(command.name, f"Skipped: `{command.name}` needs the model's insides, which a "
                                    "server does not expose; run it with --weights (and --architecture/--labels)."))
            continue
        sections.append(command.run(session))
    return write_summary(session, sections)
