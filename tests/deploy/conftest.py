"""Fixtures of the deploy tests: the fetched validators and the rendered Kubernetes manifests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import (
    RegistryUnreachable,
    fetch_validators,
    in_ci,
    kafka_config_names,
    render_kustomization,
)


@pytest.fixture(scope="session")
def validators() -> Path:
    """The directory ``scripts/fetch_validators.sh`` fills (first run: ~1 min of downloads and builds)."""
    try:
        return fetch_validators()
    except RegistryUnreachable as exc:
        if in_ci():
            raise
        pytest.skip(f"package registry unreachable, validators not fetched:\n{exc}")


@pytest.fixture(scope="session")
def k8s_docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """deploy/k8s rendered by kustomize (what ``kubectl apply -k`` would send).

    kubectl has kustomize built in; without kubectl, the kustomize the fetch script built.
    """
    if shutil.which("kubectl"):
        return render_kustomization(["kubectl", "kustomize"])
    fetched: Path = request.getfixturevalue("validators")
    return render_kustomization([str(fetched / "kustomize"), "build"])


@pytest.fixture(scope="session")
def kafka_configs() -> set[str]:
    """The configuration names Apache Kafka (the project's version) accepts (~7 s of Java)."""
    try:
        return kafka_config_names()
    except RegistryUnreachable as exc:
        if in_ci():
            raise
        pytest.skip(f"package registry unreachable, Kafka jars not fetched:\n{exc}")
