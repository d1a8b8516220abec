"""One vocabulary across the commands: the table of docs/cli.md holds for every command's --help (each
command has exactly the vocabulary options the table lists for it, no old spelling shows), --batch means
frames per inference call wherever it appears, and every old spelling still works with a warning that
names the new one."""
import importlib
import re
from importlib.metadata import entry_points
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
OLD = ("--ckpt", "--precision-hint", "--batch-size")


def command_of(entry) -> click.Command:
    """The click command behind a console script (the entry point itself, or the module's ``cli``)."""
    module, attr = entry.value.split(":")
    mod = importlib.import_module(module)
    obj = getattr(mod, attr)
    return obj if isinstance(obj, click.Command) else mod.cli


def commands() -> dict[str, click.Command]:
    """Every aaclip command and subcommand by the name a user types ('aaclip-calibrate threshold') -> the
    console script's command (a subcommand is run through its group, as users run it)."""
    found = {}

    def walk(name, root, command):
        if isinstance(command, click.Group):
            for sub, c in command.commands.items():
                walk(f"{name} {sub}", root, c)
        else:
            found[name] = root

    for entry in entry_points(group="console_scripts"):
        if entry.name.startswith("aaclip-"):
            root = command_of(entry)
            walk(entry.name, root, root)
    return found


def invoke(name: str, args: list[str]):
    """Run command ``name`` ('aaclip-calibrate threshold') with ``args`` as its console script would."""
    prog, *sub = name.split()
    return CliRunner().invoke(COMMANDS[name], [*sub, *args], prog_name=prog, terminal_width=200)


def help_text(name: str) -> str:
    result = invoke(name, ["--help"])
    assert result.exit_code == 0, result.output
    return result.output


def help_options(text: str) -> set[str]:
    """The option names a --help text lists (the start of each option line: '-o, --out PATH')."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"^\s{1,4}((?:-{1,2}[a-z][a-z0-9-]*(?:\s*/\s*-{1,2}[a-z][a-z0-9-]*)?,?\s*)+)", line)
        if m:
            names.update(re.findall(r"-{1,2}[a-z][a-z0-9-]*", m.group(1)))
    return names


def vocabulary_table() -> dict[str, set[str]]:
    """docs/cli.md's vocabulary table: option -> the commands it lists."""
    text = DOC.read_text()
    table = text[text.index("## One vocabulary"):]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`-"):
            options = re.findall(r"`(-{1,2}[a-z][a-z0-9-]*)", cells[0])
            names = set(re.findall(r"`(aaclip-[a-z]+(?: [a-z0-9-]+)?)`", cells[2]))
            for option in options:
                rows[option] = names
    return rows


COMMANDS = commands()


def test_the_table_covers_the_vocabulary_and_real_commands():
    table = vocabulary_table()
    assert set(table) == {"--checkpoint", "--backend", "--backends", "--precision", "--precisions", "--batch",
                          "--batches", "--engine-batch", "-o", "--out", "--device", "--threads", "--class",
                          "--classes", "--time-budget", "--search-frames", "--holdout", "--open-timeout",
                          "--wait-for-source"}
    listed = set().union(*table.values())
    assert listed <= set(COMMANDS), listed - set(COMMANDS)
    assert len(COMMANDS) >= 20  # every subcommand was found (calibrate, data, train groups)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_follows_the_table(name):
    text = help_text(name)
    have = help_options(text)
    assert "--help" in have and "-h" in have  # the parser reads option lines
    table = vocabulary_table()
    want = {option for option, names in table.items() if name in names}
    assert {o for o in have if o in table} == want, f"{name}: help has {sorted(have & set(table))}, docs/cli.md " \
                                                    f"lists {sorted(want)}"
    assert not have & set(OLD), f"{name} shows an old spelling"
    if "--batch" in have:  # one meaning: frames per inference call
        line = " ".join(text.split("--batch", 1)[1].split("\n  -", 1)[0].split())
        assert "per inference call" in line, f"{name}: --batch {line}"
    if "--out" in have:
        assert re.search(r"^\s+-o, --out", text, re.M), f"{name}: --out without -o"


@pytest.mark.parametrize("name, old, new, args", [
    ("aaclip-eval", "--ckpt", "--checkpoint", ["--data", "{tmp}/none.jsonl"]),
    ("aaclip-eval", "--batch-size", "--batch", ["--checkpoint", "{tmp}", "--data", "{tmp}/none.jsonl"]),
    ("aaclip-runtime", "--precision-hint", "--precision", ["{tmp}/missing.onnx", "--camera", "0"]),
    ("aaclip-export", "--batch", "--engine-batch", ["{tmp}/missing"]),
])
def test_old_spellings_work_with_a_warning_naming_the_new_one(name, old, new, args, tmp_path):
    values = {"--ckpt": "{tmp}", "--batch-size": "4", "--precision-hint": "fp32", "--batch": "1:2:4"}
    argv = [a.format(tmp=tmp_path) for a in [old, values[old], *args]]
    result = invoke(name, argv)
    warning = f"warning: {old} is deprecated; use {new} (the old spelling goes away in the next release)"
    assert result.stderr.splitlines()[0] == warning, result.output
    # parsed as the new option: the command went on to its own checks (no "no such option" usage error)
    assert "No such option" not in result.stderr and "error:" in result.stderr
    new_result = invoke(name, [a.format(tmp=tmp_path) for a in [new, values[old], *args]])
    assert new_result.exit_code == result.exit_code and "deprecated" not in new_result.stderr
    assert new_result.stderr == "\n".join(result.stderr.splitlines()[1:]) + "\n"
