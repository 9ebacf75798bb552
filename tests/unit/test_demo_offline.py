"""``metastream demo --offline`` replays a synthetic fleet through every strategy, in process."""

from __future__ import annotations

import functools

import pytest

import learners.evaluation.synthetic
from pipeline.tools import cli


def test_demo_offline_replays_every_strategy_without_parsing_a_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a small fleet instead of the default 60,000 readings; the parser may be built once only
    small = functools.partial(learners.evaluation.synthetic.make_fleet_stream, n_devices=4, n_readings=300)
    monkeypatch.setattr(
        learners.evaluation.synthetic, "make_fleet_stream", lambda **kw: small(seed=kw["seed"])
    )
    args = cli.build_parser().parse_args(["demo", "--offline", "--seed", "3"])

    def no_reparse(*_: object, **__: object) -> None:
        raise AssertionError("demo --offline built a new parser")

    monkeypatch.setattr(cli, "build_parser", no_reparse)

    # Execute
    code = args.func(args)

    # Assert
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0].split()[:3] == ["strategy", "n", "devices"]
    assert [(row.split()[0], row.split()[1], row.split()[2]) for row in lines[1:]] == [
        (name, "300", "4") for name in ["reptile", "fomaml", "scratch", "finetune", "global", "river-linear"]
    ]
