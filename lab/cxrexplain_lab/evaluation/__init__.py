"""``cxrexplain-eval``: localization, cascading randomization and a report, on users' folders or phantoms,
over a bundle or an archive on a running server (:mod:`.cli`)."""

from .cli import SUBCOMMANDS, main
from .command import Section, Session, Subcommand

__all__ = ["SUBCOMMANDS", "Section", "Session", "Subcommand", "main"]
