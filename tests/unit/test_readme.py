"""The README's promises that can drift from the code: settings table, commands, flags."""

from __future__ import annotations

import ast
import dataclasses
import json
import shlex
from typing import Any

import pytest

from connectors.settings import ENV_PREFIX, Settings
from pipeline.tools.cli import build_parser
from tests.readme import ROOT, blocks, commands, table


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def _cell_value(cell: str, like: Any) -> Any:
    """A table cell (in backticks) as a value of the type of ``like``."""
    assert cell.startswith("`") and cell.endswith("`"), cell
    raw = cell[1:-1]
    if isinstance(like, str):
        return "" if raw == '""' else raw
    if isinstance(like, dict):
        return json.loads(raw)
    return type(like)(float(raw))


def test_the_configuration_table_lists_every_setting_with_its_env_var_and_default() -> None:
    # Prepare
    rows = table("Configuration reference")
    fields = {f.name: f for f in dataclasses.fields(Settings)}

    # Execute
    documented = {row[0].strip("`"): row for row in rows}

    # Assert: exactly the fields, in their order, each with its real env var and default.
    missing, stale = [f for f in fields if f not in documented], [d for d in documented if d not in fields]
    assert (missing, stale) == ([], [])
    assert list(documented) == list(fields)
    for name, (_, env, default, meaning) in documented.items():
        assert env == f"`{ENV_PREFIX}{name.upper()}`"
        assert _cell_value(default, _default(fields[name])) == _default(fields[name]), name
        assert meaning, name


def test_ci_runs_exactly_the_readme_test_command() -> None:
    # Prepare
    two = next(b for b in blocks() if b.section == "Two commands")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()

    # Execute
    readme_test = [c for c in commands(two) if c.endswith(" test")]
    ci_commands = [line for line in ci if line.strip() and not line.startswith(("#", "set ", "cd "))]

    # Assert
    assert commands(two) == ["make demo", "make test"]
    assert ci_commands == readme_test == ["make test"]


def _metastream_argv(command: str) -> list[str] | None:
    """The ``metastream`` arguments of a README command, with placeholders filled in."""
    words = shlex.split(command.replace("PORT", "9092"))
    if words[0] in ("metastream", ".venv/bin/metastream"):
        return words[1:]
    if words[:2] == ["make", "demo"] and len(words) == 3 and words[2].startswith("DEMO_ARGS="):
        return ["demo", *shlex.split(words[2].removeprefix("DEMO_ARGS="))]
    return None


def _readme_cli_commands() -> list[list[str]]:
    found = []
    for block in blocks():
        if block.lang == "bash":
            found += [argv for c in commands(block) if (argv := _metastream_argv(c)) is not None]
    return found


def test_every_metastream_command_in_the_readme_parses_with_the_real_cli() -> None:
    # Prepare
    parser = build_parser()
    argvs = _readme_cli_commands()

    # Execute / Assert: argparse exits (SystemExit) on an unknown command or flag.
    assert len(argvs) >= 15  # the tour, the pieces, replay, evaluate, metrics: all found
    for argv in argvs:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: metastream {shlex.join(argv)}")


def test_the_python_examples_are_valid_python() -> None:
    # Prepare
    python = [b for b in blocks() if b.lang == "python"]

    # Execute / Assert: the newcomer test runs them against a real broker; this is the quick check.
    assert [b.section for b in python] == [
        "Plug in your own producer",
        "Plug in your own producer",
        "Subscribe a device",
        "Run it on a device",
    ]
    for b in python:
        ast.parse(b.text)
