"""deploy/Dockerfile installs what the README's ``make install`` installs, and runs ``metastream``."""

from __future__ import annotations

import json
import re
import tomllib

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


def instructions(name: str) -> list[str]:
    return [args for inst, args in dockerfile_instructions(DOCKERFILE) if inst == name]


def test_image_installs_the_project_with_the_makefile_extras_minus_dev() -> None:
    # Prepare
    make_targets = [t for line in makefile_recipe_lines(ROOT / "Makefile") for t in pip_install_targets(line)]
    docker_targets = [t for run in instructions("RUN") for t in pip_install_targets(run)]
    # Execute
    make_project = [split_extras(t) for t in make_targets if t.startswith(".")]
    docker_project = [split_extras(t) for t in docker_targets]
    # Assert: the Makefile's other install is only pip itself
    assert [t for t in make_targets if not t.startswith(".")] == ["pip"]
    assert len(make_project) == 1 and len(docker_project) == 1
    (make_path, make_extras), (docker_path, docker_extras) = make_project[0], docker_project[0]
    assert make_path == docker_path == "."
    assert docker_extras == make_extras - {"dev"} == {"report"}
    assert docker_extras <= set(PYPROJECT["project"]["optional-dependencies"])


def test_readme_installs_what_the_makefile_installs() -> None:
    # Prepare
    readme = (ROOT / "README.md").read_text()
    make_targets = [t for line in makefile_recipe_lines(ROOT / "Makefile") for t in pip_install_targets(line)]
    # Execute
    (project,) = [t for t in make_targets if t.startswith(".")]
    # Assert
    assert f"pip install -e '{project}'" in readme


def test_image_copies_every_package_and_the_files_the_build_reads() -> None:
    # Prepare
    copied = {src.rstrip("/") for args in instructions("COPY") for src in args.split()[:-1]}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    # Execute
    missing = ({"pyproject.toml", PYPROJECT["project"]["readme"]} | packages) - copied
    # Assert
    assert missing == set()


def test_entrypoint_is_the_metastream_console_script() -> None:
    # Execute
    entrypoints = [json.loads(args) for args in instructions("ENTRYPOINT")]
    # Assert
    assert entrypoints == [["metastream"]]
    assert PYPROJECT["project"]["scripts"]["metastream"] == "pipeline.cli:main"


def test_python_version_satisfies_requires_python() -> None:
    # Prepare
    (base,) = instructions("FROM")
    # Execute
    match = re.fullmatch(r"python:(\d+)\.(\d+)(?:-slim)?", base)
    # Assert
    assert match is not None, base
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert (int(match.group(1)), int(match.group(2))) >= (3, 11)


def test_image_user_is_the_uid_kubernetes_runs_the_worker_as() -> None:
    # Prepare
    (deployment,) = [d for d in load_yaml_docs(K8S / "worker.yaml") if d["kind"] == "Deployment"]
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    # Execute
    users = instructions("USER")
    # Assert
    assert users == ["10001:10001"]
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (10001, 10001, 10001)
    assert "--uid 10001" in " ".join(instructions("RUN"))


def test_torch_runs_one_thread_per_process() -> None:
    # Execute
    env = " ".join(instructions("ENV"))
    # Assert
    assert "METASTREAM_TORCH_THREADS=1" in env and "OMP_NUM_THREADS=1" in env
