"""Pieces shared by the training-side commands: logging options, --object-name, the default-command group."""
from __future__ import annotations

import functools

import click

from aaclip.runtime.log import Group, UserError, setup_logging


def verbosity(f):
    """-v/-q options that configure logging before the command runs."""

    @click.option("-v", "--verbose", count=True, help="More log output (debug).")
    @click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
    @functools.wraps(f)
    def wrapper(*args, verbose: int, quiet: bool, **kwargs):
        setup_logging(verbose, quiet)
        return f(*args, **kwargs)

    return wrapper


def parse_object_names(values) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise UserError(f"--object-name expects CLASS=NAME, got {v!r}")
        k, name = v.split("=", 1)
        out[k.strip()] = name.strip()
    return out


class DefaultGroup(Group):
    """A group whose default subcommand runs when the first argument is not a subcommand name."""

    def __init__(self, *args, default: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = [self.default, *args]
        return super().parse_args(ctx, args)
