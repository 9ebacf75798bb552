"""Helpers of the deploy tests: load the deploy/ files and the validators for them.

The validators come from ``scripts/fetch_validators.sh`` (cached under
``~/.cache/metastream/validators``): compose-go, Strimzi's and KEDA's
CustomResourceDefinitions.  The Kubernetes schemas of built-in kinds come
with the ``kubernetes-validate`` dev dependency.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dockerfile
import jsonschema
import yaml

from pipeline.tools.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
FETCH_SCRIPT = ROOT / "scripts" / "fetch_validators.sh"

FETCHED_VERSIONS = dict(re.findall(r"^(\w+_VERSION)=(\S+)$", FETCH_SCRIPT.read_text(), re.MULTILINE))
"""The validator versions ``scripts/fetch_validators.sh`` pins (``STRIMZI_VERSION``, ``KEDA_VERSION``, …)."""

KUBERNETES_VERSION = "1.31.0"
"""Built-in kinds are checked against this Kubernetes release's schemas (strict: no unknown fields)."""

NOT_SETTINGS = {"METASTREAM_TORCH_THREADS"}
"""``METASTREAM_*`` variables read by the command itself rather than by :class:`Settings`."""

# What a failed fetch prints when the registry cannot be reached at all (as opposed to a bug).
_UNREACHABLE = re.compile(
    r"no such host|i/o timeout|connection refused|network is unreachable|dial tcp|"
    r"UnknownHostException|Could not transfer|Connection timed out|Temporary failure in name resolution",
    re.IGNORECASE,
)


class RegistryUnreachable(RuntimeError):
    """The validators could not be fetched because the package registry is not reachable."""


def fetch_validators() -> Path:
    """Run ``scripts/fetch_validators.sh``; the directory that holds the validators.

    Raises
    ------
    RegistryUnreachable
        If the fetch failed with a network error.
    RuntimeError
        If it failed for any other reason.
    """
    proc = subprocess.run(["bash", str(FETCH_SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        output = proc.stdout[-4000:] + proc.stderr[-4000:]
        if _UNREACHABLE.search(output):
            raise RegistryUnreachable(output)
        raise RuntimeError(f"{FETCH_SCRIPT.name} failed:\n{output}")
    return Path(proc.stdout.strip().splitlines()[-1])


def kafka_config_names() -> set[str]:
    """Every configuration name of the project's Apache Kafka broker (its own ``ConfigDef``).

    Uses the broker jars :func:`pipeline.tools.brokers.ensure_jars` caches (the integration tests'
    broker); raises :class:`RegistryUnreachable` if they cannot be fetched for lack of network.
    """
    from pipeline.tools.brokers import ensure_jars

    try:
        libs = ensure_jars()
    except RuntimeError as exc:
        if _UNREACHABLE.search(str(exc)):
            raise RegistryUnreachable(str(exc)) from exc
        raise
    java = Path(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
    proc = subprocess.run(
        [str(java), "-cp", f"{libs}/*", str(Path(__file__).with_name("KafkaConfigNames.java"))],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"listing Kafka's configuration names failed:\n{proc.stderr[-3000:]}")
    return set(proc.stdout.split())


def kafka_env_to_config(name: str) -> str:
    """The broker setting an ``apache/kafka`` image variable sets: ``KAFKA_LOG_DIRS`` → ``log.dirs``.

    The image's rule: ``_`` → ``.``, ``__`` → ``_``, ``___`` → ``-``.
    """
    rest = name.removeprefix("KAFKA_").lower()
    return rest.replace("___", "-").replace("__", "\0").replace("_", ".").replace("\0", "_")


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of ``path``."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render_kustomization(kustomize: list[str], directory: Path = K8S) -> list[dict[str, Any]]:
    """The resources ``kubectl apply -k directory`` would send, rendered offline by ``kustomize``.

    ``kustomize`` is ``["kubectl", "kustomize"]`` or ``[path-to-kustomize, "build"]``.
    """
    proc = subprocess.run([*kustomize, str(directory)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(kustomize)} {directory} failed:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def tool(name: str, fetched: Path) -> str:
    """``name`` from PATH, else the copy ``scripts/fetch_validators.sh`` put at ``fetched``."""
    found = shutil.which(name)
    if found:
        return found
    if not fetched.exists():
        raise FileNotFoundError(f"{name} is not installed and {fetched} was not fetched")
    return str(fetched)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The documents of one kind."""
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single document of ``kind``; fails if there is not exactly one."""
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """``argv`` (without the ``metastream`` program name) parsed by the real command line parser.

    argparse exits on unknown flags; that becomes an AssertionError naming the command.
    """
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"metastream {shlex.join(argv)} is not a valid command line") from exc


# -- CustomResourceDefinition schemas -----------------------------------------------------------


def crd_validator(crd_file: Path, version: str) -> jsonschema.Draft4Validator:
    """A strict JSON-schema validator for one version of the CRD in ``crd_file``.

    Kubernetes prunes unknown fields of a custom resource silently; here they are errors
    (``additionalProperties: false`` wherever the schema lists properties and does not
    preserve unknown fields), so a misspelt field fails the test instead of vanishing.
    """
    crd = next(d for d in load_yaml_docs(crd_file) if d.get("kind") == "CustomResourceDefinition")
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = _strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
            schema["properties"]["apiVersion"] = {"enum": [f"{crd['spec']['group']}/{version}"]}
            schema["properties"]["kind"] = {"enum": [crd["spec"]["names"]["kind"]]}
            schema.setdefault("required", [])
            schema["required"] = sorted({*schema["required"], "apiVersion", "kind", "metadata", "spec"})
            return jsonschema.Draft4Validator(schema)
    raise KeyError(f"{crd_file} has no version {version}")


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        if node.pop("x-kubernetes-int-or-string", False):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
        for key, value in list(node.items()):
            node[key] = _strict(value)
        if "properties" in node and "additionalProperties" not in node and not preserve:
            node["additionalProperties"] = False
    elif isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def schema_errors(validator: jsonschema.Draft4Validator, doc: dict[str, Any]) -> list[str]:
    """Every schema violation of ``doc`` as ``path: message``."""
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def keda_kafka_metadata_keys(scaler_go: Path) -> set[str]:
    """The trigger metadata keys KEDA's ``kafka`` scaler reads, from its source.

    Both spellings occur: ``TriggerMetadata["topic"]`` and a named constant
    (``lagThresholdMetricName = "lagThreshold"`` then ``TriggerMetadata[lagThresholdMetricName]``).
    """
    src = scaler_go.read_text()
    keys = set(re.findall(r'TriggerMetadata\["(\w+)"\]', src))
    constants = dict(re.findall(r'(\w+)\s*=\s*"(\w+)"', src))
    keys |= {constants[name] for name in re.findall(r"TriggerMetadata\[(\w+)\]", src) if name in constants}
    return keys


# -- Dockerfile and Makefile --------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, tuple[str, ...], bool]]:
    """``(INSTRUCTION, arguments, is_json_form)`` of every instruction, by Docker's own parser.

    The ``dockerfile`` package wraps BuildKit's Go parser, so continuation lines, comments
    and the JSON (exec) form are read exactly as ``docker build`` reads them.
    """
    return [(c.cmd.upper(), tuple(c.value), bool(c.json)) for c in dockerfile.parse_file(str(path))]


def pip_install_targets(command: str) -> list[str]:
    """The requirement arguments of every ``pip install`` in a shell command line (options dropped)."""
    targets: list[str] = []
    for part in re.split(r"&&|;|\n", command):
        words = shlex.split(part)
        for i in range(len(words) - 1):
            if words[i].endswith("pip") and words[i + 1] == "install":
                args = words[i + 2 :]
                skip_next = False
                for word in args:
                    if skip_next:
                        skip_next = False
                    elif word in ("--progress-bar", "-r", "-c", "--index-url", "-i"):
                        skip_next = True
                    elif word == "-e" or word.startswith("-"):
                        continue
                    else:
                        targets.append(word)
    return targets


def split_extras(requirement: str) -> tuple[str, set[str]]:
    """``".[dev,report]"`` → ``(".", {"dev", "report"})``."""
    match = re.fullmatch(r"([^\[\]]+)(?:\[([^\]]*)\])?", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    extras = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
    return match.group(1), extras


def makefile_recipe_lines(path: Path) -> list[str]:
    """The recipe lines of a Makefile with ``$(VAR)`` references expanded from simple assignments."""
    text = path.read_text()
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*?)\s*$", text, re.MULTILINE))
    lines = [line[1:] for line in text.splitlines() if line.startswith("\t")]
    for _ in range(3):  # nested references such as $(BIN) → $(VENV)/bin
        lines = [re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), ln) for ln in lines]
    return lines


def env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of an environment file (comments and blanks skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=value: {line!r}"
            out[key.strip()] = value.strip()
    return out


def in_ci() -> bool:
    """True on CI, where a missing validator must fail rather than skip."""
    return bool(os.environ.get("CI"))
