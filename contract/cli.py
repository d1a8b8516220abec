"""What every ``aaclip-*`` command shares: logging set-up, ``-h/-v/-q``, one-line errors, checked numbers.

- ``Command`` / ``Group`` / ``DefaultGroup``: click classes that turn a ``UserError`` into one
  ``error: ...`` line on stderr with exit status 2 (Ctrl-C: exit 130), never a traceback.
- ``verbosity``: the ``-v/--verbose`` and ``-q/--quiet`` options, configuring logging before the command.
- ``CONTEXT``: ``-h`` as well as ``--help`` and a readable help width.
- ``FiniteFloat``: a float option type that refuses NaN, inf and values outside a range.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import re
import sys
from typing import Optional

import click

from .errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

# Exit status of every command (docs/cli.md, "Exit codes")
EXIT_OK = 0            # finished: the work is done (end of input, --max-frames), or stopped by SIGINT/SIGTERM
EXIT_CHECK_FAILED = 1  # a check ran and failed: aaclip-export --verify beyond tolerances, an accuracy gate
EXIT_BAD_INPUT = 2     # bad input: one "error: ..." line (bad option, missing file, a source that never opened)
EXIT_SOURCE_LOST = 3   # aaclip-runtime: a source that had delivered frames was gone when the run ended
EXIT_INTERRUPTED = 130  # Ctrl-C outside the camera loop's own handling, or a second signal
_LOGGING_SET = "aaclip.logging"


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """One format for every command, to stderr; -v for debug, -q for warnings only."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_hide_library_chatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_opencv(level <= logging.DEBUG)


def quiet_opencv(verbose: bool = False) -> None:
    """OpenCV prints its own ``[ WARN:0@0.048] global cap_v4l.cpp ...`` lines (several per failed camera open)
    to the console, outside our log: silence them (and FFmpeg's), unless -v asks for everything. Our log says
    what failed, once, in words."""
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "32" if verbose else "-8"  # AV_LOG_INFO, or AV_LOG_QUIET
    try:
        import cv2
    except ImportError:  # pragma: no cover - cv2 is a dependency of every install
        return
    level = _OPENCV_LOG_INFO if verbose else _OPENCV_LOG_SILENT
    levels = getattr(getattr(cv2, "utils", None), "logging", None)
    if levels is not None:          # OpenCV >= 4.12 (and 5.x)
        levels.setLogLevel(level)
    elif hasattr(cv2, "setLogLevel"):  # OpenCV <= 4.11 (aaclip-serve's environment pins it)
        cv2.setLogLevel(level)


# cv::utils::logging::LogLevel: the same numbers in every OpenCV version
_OPENCV_LOG_SILENT = 0
_OPENCV_LOG_INFO = 4


def _hide_library_chatter(record: logging.LogRecord) -> bool:
    """OpenCLIP logs routine INFO messages on the root logger; keep them for -v (DEBUG) runs only."""
    if record.name == "root" and record.levelno < logging.WARNING and "open_clip" in record.pathname:
        return logging.getLogger().level <= logging.DEBUG
    return True


def verbosity(f):
    """-v/-q options that configure logging before the command runs (the command does not see them).

    On a group and its subcommands alike (``aaclip-data -v check`` = ``aaclip-data check -v``): a subcommand
    without either flag keeps what its group set up."""

    @click.option("-v", "--verbose", count=True, help="More log output (debug).")
    @click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
    @functools.wraps(f)
    def wrapper(*args, verbose: int, quiet: bool, **kwargs):
        ctx = click.get_current_context(silent=True)
        if ctx is None or verbose or quiet or not ctx.meta.get(_LOGGING_SET):
            setup_logging(verbose, quiet)
            if ctx is not None:
                ctx.meta[_LOGGING_SET] = True  # shared with the subcommand's context
        return f(*args, **kwargs)

    return wrapper


class _UsageError(click.UsageError):
    """Bad usage (unknown option, bad value, missing argument) shown as one ``error: ...`` line, exit 2."""

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} -h')" if self.ctx is not None else ""
        click.echo(f"error: {self.format_message()}{hint}", err=True)


def _one_line(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, (_UsageError, click.exceptions.NoArgsIsHelpError)):
        return exc
    one = _UsageError(exc.format_message(), exc.ctx)
    one.exit_code = exc.exit_code
    return one


RENAMED_OPTIONS = {"--ckpt": "--checkpoint", "--precision-hint": "--precision", "--batch-size": "--batch"}
"""Old spellings of the one vocabulary (docs/cli.md), accepted for one release with a warning naming the new
one, by every command that has the new option. A command adds its own in ``renamed`` (``renamed_options``)."""


def renamed_options(**old_to_new: str):
    """Decorator above ``@click.command``: this command's own old spellings, e.g. ``renamed_options(batch=
    "engine-batch")`` for an option whose name now means something else across commands."""
    def mark(command: click.Command) -> click.Command:
        command.renamed = {f"--{old.replace('_', '-')}": f"--{new}" for old, new in old_to_new.items()}
        return command

    return mark


def _modernize(command: click.Command, args: list[str]) -> list[str]:
    """``args`` with the command's deprecated option spellings replaced by the new ones (a warning for each)."""
    known = {name for p in command.params for name in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}
    mapping = {old: new for old, new in {**RENAMED_OPTIONS, **getattr(command, "renamed", {})}.items()
               if old not in known and new in known}
    if not mapping:
        return args
    out = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        old, eq, value = arg.partition("=")
        if old in mapping:
            click.echo(f"warning: {old} is deprecated; use {mapping[old]} (the old spelling goes away in the next "
                       "release)", err=True)
            arg = mapping[old] + eq + value
        out.append(arg)
    return out


class _ReportsErrors:
    """Click mixin: a UserError (or an OSError such as a full disk: it names the file) becomes one
    ``error: ...`` line on stderr and exit status 2, and so does click's own usage error (instead of its
    usage block and ``Error: ...``); Ctrl-C outside the camera loop's own handling exits 130. Deprecated
    option spellings (``RENAMED_OPTIONS``, a command's ``renamed``) are rewritten with a warning."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, _modernize(self, list(args)))

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a subcommand's arguments, or ctx.fail in a command
            raise _one_line(exc) from None
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except OSError as exc:  # a full disk, a read-only folder, a vanished file: say which file and why
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(f"error: cannot use{where}: {exc.strerror or exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("error: interrupted; outputs may be incomplete", err=True)
            sys.exit(EXIT_INTERRUPTED)


class Command(_ReportsErrors, click.Command):
    """``@click.command(cls=Command)``."""


class Group(_ReportsErrors, click.Group):
    """``@click.group(cls=Group)``: covers the group's subcommands too (they are ``Command``s)."""

    command_class = Command


class DefaultGroup(Group):
    """A group whose default subcommand runs when the first argument is not a subcommand name."""

    def __init__(self, *args, default: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx, args):
        # the group's own -v/-q may come first: `aaclip-train -v fit ...` and `aaclip-train -v --data ...`
        i = 0
        while i < len(args) and re.fullmatch(r"-v+|--verbose|-q|--quiet", args[i]):
            i += 1
        if i == len(args) or (args[i] not in self.commands and args[i] not in ("--help", "-h")):
            args = [*args[:i], self.default, *args[i:]]
        return super().parse_args(ctx, args)


class FiniteFloat(click.ParamType):
    """A float that must be finite and, when bounds are given, inside them (``min_open``: strictly above)."""

    name = "float"

    def __init__(self, min: Optional[float] = None, max: Optional[float] = None, min_open: bool = False):
        self.min, self.max, self.min_open = min, max, min_open

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and (number < self.min or (self.min_open and number == self.min)):
            self.fail(f"{number:g} must be {'>' if self.min_open else '>='} {self.min:g}", param, ctx)
        if self.max is not None and number > self.max:
            self.fail(f"{number:g} must be <= {self.max:g}", param, ctx)
        return number
