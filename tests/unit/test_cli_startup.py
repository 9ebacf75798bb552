"""``metastream --help`` and argument errors must not pay for torch, Faust or River."""

from __future__ import annotations

import argparse
import subprocess
import sys

from pipeline.tools.cli import _COMMANDS, build_parser

HEAVY = ("torch", "faust", "river", "aiokafka")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_importing_the_cli_and_listing_commands_imports_no_heavy_module() -> None:
    # Prepare
    code = "from pipeline.tools.cli import build_parser\nbuild_parser(load=()).format_help()"

    # Execute
    loaded = _modules_after(code)

    # Assert
    assert "pipeline.tools.cli" in loaded
    assert [m for m in HEAVY if m in loaded] == []


def test_help_exits_before_torch_is_imported() -> None:
    # Prepare
    code = (
        "from pipeline.tools.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    main(['replay', '--no-such-flag'])\nexcept SystemExit:\n    pass\n"
        "for command in ('worker', 'produce', 'tail', 'keys', 'broker'):\n"
        "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass"
    )

    # Execute
    loaded = _modules_after(code)

    # Assert
    assert [m for m in HEAVY if m in loaded] == []


def test_the_quick_listing_shows_the_same_commands_and_help_as_the_full_parser() -> None:
    # Prepare
    def listing(parser: argparse.ArgumentParser) -> dict[str, str | None]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return {c.dest: c.help for c in sub._choices_actions}

    # Execute
    quick, full = listing(build_parser(load=())), listing(build_parser())

    # Assert
    assert quick == full
    assert set(_COMMANDS) <= set(full)
