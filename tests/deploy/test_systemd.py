"""deploy/systemd: the edge unit passes ``systemd-analyze verify`` and runs a valid edge command."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.settings import Settings
from tests.deploy.manifests import DEPLOY, NOT_SETTINGS, env_file, parse_cli, tool

UNIT = DEPLOY / "systemd" / "metastream-edge@.service"
INSTALLED_BINARY = "/opt/metastream/bin/metastream"


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file; every key keeps all its values (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def verify(validators: Path, tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` of ``text`` as instance ``dev-0001``.

    verify insists that the ExecStart binary exists; here it is this checkout's
    ``metastream`` instead of the installed /opt/metastream one (nothing else changes).
    """
    metastream = Path(sys.executable).with_name("metastream")
    (tmp_path / UNIT.name).write_text(text.replace(INSTALLED_BINARY, str(metastream)))
    analyze = tool("systemd-analyze", validators / "systemd" / "systemd-analyze")
    return subprocess.run(
        [analyze, "verify", "--man=no", f"./{UNIT.name.replace('@', '@dev-0001')}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    # verify loads an instance through a link named like it, as systemctl would
    (tmp_path / UNIT.name.replace("@", "@dev-0001")).symlink_to(UNIT.name)
    return tmp_path


@pytest.mark.slow
def test_unit_passes_systemd_analyze_verify_without_warnings(validators: Path, unit_dir: Path) -> None:
    # Execute
    proc = verify(validators, unit_dir, UNIT.read_text())
    # Assert
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("ProtectHome=yes", "ProtectHome=yess", "Failed to parse protect home value"),
        ("Restart=on-failure", "Restartt=on-failure", "Unknown key 'Restartt'"),
    ],
)
def test_verify_reports_a_broken_copy(
    validators: Path, unit_dir: Path, old: str, new: str, expected: str
) -> None:
    # Prepare
    text = UNIT.read_text()
    assert old in text
    # Execute
    proc = verify(validators, unit_dir, text.replace(old, new, 1))
    # Assert
    assert expected in proc.stdout + proc.stderr


def test_exec_start_is_a_valid_edge_command_line() -> None:
    # Prepare
    service = unit_sections(UNIT.read_text())["Service"]
    (exec_start,) = service["ExecStart"]
    # Execute
    argv = shlex.split(exec_start.replace("%i", "dev-0001"))
    args = parse_cli(argv[1:])
    # Assert
    assert argv[0] == INSTALLED_BINARY
    assert args.command == "edge" and args.device == ["dev-0001"] and args.follow_meta
    assert args.trusted_key is None  # from METASTREAM_TRUSTED_KEYS in the EnvironmentFile


def test_unit_is_hardened_restarts_on_failure_and_reads_an_environment_file() -> None:
    # Prepare
    sections = unit_sections(UNIT.read_text())
    service = {k: v[-1] for k, v in sections["Service"].items()}
    # Execute
    env_files = sections["Service"]["EnvironmentFile"]
    # Assert
    assert env_files == ["/etc/metastream/edge.env"]  # no "-" prefix: a missing file is an error
    assert service["DynamicUser"] == "yes" and service["Restart"] == "on-failure"
    assert service["ProtectSystem"] == "strict" and service["ProtectHome"] == "yes"
    assert service["KillSignal"] == "SIGINT"
    assert sections["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


def test_example_environment_file_holds_settings_an_edge_needs() -> None:
    # Prepare
    env = env_file(DEPLOY / "systemd" / "edge.env.example")
    fields = {f"METASTREAM_{name.upper()}" for name in Settings.__dataclass_fields__}
    # Execute
    settings = Settings.load(environ=env)
    # Assert
    assert set(env) - fields - NOT_SETTINGS == set()
    assert settings.trusted_keys == "/etc/metastream/worker.pub.pem"
    assert settings.broker.startswith("kafka://") and settings.signing_key == ""  # no private key on edges


def test_unit_file_parses_as_ini() -> None:
    # Prepare: systemd's syntax is a superset of INI except for repeated keys
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    # Execute
    parser.read_string(UNIT.read_text())
    # Assert
    assert parser.sections() == ["Unit", "Service", "Install"]
