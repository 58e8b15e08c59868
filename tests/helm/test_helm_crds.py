"""The chart ships exactly the generated CRDs: byte-for-byte copies of crds/ at the repository root.

crds/ is generated from the pydantic models (`tarsctl crds generate`); the chart's copies must be
refreshed with it. On a mismatch, copy crds/*.yaml into charts/tars-operator/crds/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_support import CHART, REPO

from tars_api.crd import render_crds

TOP = REPO / "crds"
COPIES = CHART / "crds"
FIX = "refresh them: cp crds/*.yaml charts/tars-operator/crds/"


def _yaml_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.yaml"))}


def test_chart_crds_are_byte_identical_to_crds_dir() -> None:
    top = _yaml_files(TOP)
    if not top:
        pytest.fail(f"{TOP} has no CRDs: run `tarsctl crds generate`")
    copies = _yaml_files(COPIES)
    assert sorted(copies) == sorted(top), f"the chart's CRD files differ from crds/: {FIX}"
    stale = [name for name in top if copies[name] != top[name]]
    assert not stale, f"stale CRD copies in the chart: {stale}; {FIX}"


def test_chart_crds_match_the_generator() -> None:
    # Catches a chart that was refreshed from a stale crds/ as well.
    generated = {name: text.encode() for name, text in render_crds().items()}
    assert _yaml_files(COPIES) == generated, f"the chart's CRDs are not what the API models generate; {FIX}"


def test_chart_ships_no_crds_as_templates() -> None:
    # CRDs in templates/ would be deleted by `helm uninstall`, taking every TarsNode and TarsModel with them.
    for template in (CHART / "templates").glob("*.yaml"):
        assert "kind: CustomResourceDefinition" not in template.read_text(), template.name
