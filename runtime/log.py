"""Logging set-up shared by every command: one format, level from -v/-q, messages to stderr."""
from __future__ import annotations

import logging
import sys

import click


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_hide_library_chatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _hide_library_chatter(record: logging.LogRecord) -> bool:
    """OpenCLIP logs routine INFO messages on the root logger; keep them for -v (DEBUG) runs only."""
    if record.name == "root" and record.levelno < logging.WARNING and "open_clip" in record.pathname:
        return logging.getLogger().level <= logging.DEBUG
    return True


class UserError(Exception):
    """Bad input from the user. Commands print its message as one line and exit with status 2."""


class _ReportsErrors:
    """Click mixin shared by every aaclip command: a UserError becomes one ``error: ...`` line on stderr
    and exit status 2; Ctrl-C outside the camera loop's own handling exits 130."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("error: interrupted; outputs may be incomplete", err=True)
            sys.exit(130)


class Command(_ReportsErrors, click.Command):
    """``@click.command(cls=Command)``."""


class Group(_ReportsErrors, click.Group):
    """``@click.group(cls=Group)``: covers the group's subcommands too."""
