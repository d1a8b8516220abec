"""What every aaclip-* command shares (README, "Every command has ..."): -h, -v and -q on every command and
subcommand, one `error: ...` line and exit 2 for bad usage, and help texts that point only to docs that exist."""
from __future__ import annotations

import configparser
import importlib
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


def _entry_points() -> dict[str, click.Command]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    out = {}
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        name, target = (part.strip() for part in line.split("="))
        module, attr = target.split(":")
        obj = getattr(importlib.import_module(module), attr)
        out[name] = obj if isinstance(obj, click.Command) else _command_of(module)
    return out


def _command_of(module: str) -> click.Command:
    """The click command a plain ``main(args)`` function of ``module`` runs."""
    mod = importlib.import_module(module)
    found = [v for v in vars(mod).values()
             if isinstance(v, click.Command) and getattr(v.callback, "__module__", None) == module]
    groups = [c for c in found if isinstance(c, click.Group)]
    return (groups or found)[0]


def _commands() -> list[tuple[str, click.Command, list[str]]]:
    rows = []
    for name, cmd in _entry_points().items():
        rows.append((name, cmd, []))
        if isinstance(cmd, click.Group):
            rows += [(f"{name} {sub}", cmd, [sub]) for sub in cmd.commands]
    return rows


COMMANDS = _commands()


@pytest.mark.parametrize("name, cmd, path", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_command_has_h_v_q(name, cmd, path):
    res = CliRunner().invoke(cmd, [*path, "-h"], prog_name=name.split()[0])
    assert res.exit_code == 0, res.output
    assert "-h, --help" in res.output
    assert "-v, --verbose" in res.output and "-q, --quiet" in res.output, f"{name} lacks -v/-q"


@pytest.mark.parametrize("name, cmd, path", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_bad_usage_is_one_error_line_and_exit_2(name, cmd, path):
    res = CliRunner().invoke(cmd, [*path, "--no-such-option"], prog_name=name.split()[0])
    assert res.exit_code == 2
    assert res.stdout == "", res.output  # the error goes to stderr, nothing to stdout
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and res.stderr.endswith("\n"), res.stderr  # exactly one line: no usage block, no hint line
    assert re.fullmatch(r"error: No such option '--no-such-option'\.( Did you mean '--[\w-]+'\?)? "
                        r"\(see '" + re.escape(name if path else name.split()[0]) + r"( \w+)? -h'\)", lines[0]), lines[0]


def test_help_texts_point_to_docs_that_exist():
    seen = 0
    for name, cmd, path in COMMANDS:
        text = CliRunner().invoke(cmd, [*path, "-h"], prog_name=name.split()[0]).output
        for doc in re.findall(r"\b((?:docs|runtime)/[\w./-]+\.md)", text):
            seen += 1
            assert (REPO / doc).is_file(), f"{name} -h points to {doc}, which does not exist"
    assert seen >= 3
