"""Fixtures of the Helm chart tests; the shared code lives in chart_support.py."""

from __future__ import annotations

from typing import Any

import pytest
from chart_support import FULL_VALUES, Helm, bin_dir, find_helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    found = find_helm()
    if found is None:
        raise RuntimeError(f"helm is not built in {bin_dir()}: run hack/build-control-plane.sh (or set TARS_BIN_DIR)")
    return found


@pytest.fixture(scope="session")
def default_manifests(helm: Helm) -> list[dict[str, Any]]:
    return helm.template()


@pytest.fixture(scope="session")
def full_manifests(helm: Helm) -> list[dict[str, Any]]:
    return helm.template(FULL_VALUES)
