"""The Argo CD examples: health checks in Lua run against sample objects, manifests stay consistent."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import REPO

from tars_api import TarsModel, TarsNode

ARGOCD = REPO / "examples" / "argocd"
HEALTH = ARGOCD / "health" / "tars.hyperlight.dev"
KINDS = {"TarsNode": TarsNode, "TarsModel": TarsModel}


def _cases() -> list[tuple[str, str, dict[str, Any]]]:
    cases = []
    for kind in KINDS:
        for case in yaml.safe_load((HEALTH / kind / "health_test.yaml").read_text())["tests"]:
            cases.append((kind, case["inputPath"], case["healthStatus"]))
    return cases


CASES = _cases()


def _floats(value: Any) -> Any:
    """Argo CD decodes JSON into Lua with every number a float; do the same."""
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# Lua 5.1 is the dialect of gopher-lua, which Argo CD embeds; 5.4 catches reliance on 5.1 quirks.
@pytest.fixture(params=["lua51", "lua54"], scope="module")
def lua_health(request: pytest.FixtureRequest) -> Any:
    # lupa (a dev dependency) ships wheels with both Lua 5.1 and 5.4 built in.
    lupa = importlib.import_module(f"lupa.{request.param}")

    def run(kind: str, obj: dict[str, Any]) -> dict[str, str]:
        runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
        script = (HEALTH / kind / "health.lua").read_text()
        check = runtime.eval(f"function(obj)\n{script}\nend")
        result = check(runtime.table_from(_floats(obj), recursive=True))
        return dict(result.items())

    return run


@pytest.mark.parametrize(("kind", "input_path", "expected"), CASES, ids=[f"{k}-{Path(p).stem}" for k, p, _ in CASES])
def test_health_check(lua_health: Any, kind: str, input_path: str, expected: dict[str, str]) -> None:
    obj = yaml.safe_load((HEALTH / kind / input_path).read_text())
    assert lua_health(kind, obj) == expected


def test_health_cases_cover_every_status() -> None:
    for kind in KINDS:
        statuses = {expected["status"] for k, _, expected in CASES if k == kind}
        assert statuses == {"Healthy", "Progressing", "Degraded"}, kind


@pytest.mark.parametrize("kind", list(KINDS))
def test_health_testdata_are_valid_objects(kind: str) -> None:
    for path in sorted((HEALTH / kind / "testdata").glob("*.yaml")):
        KINDS[kind].model_validate(yaml.safe_load(path.read_text()))


def test_argocd_cm_snippet_embeds_the_tested_lua() -> None:
    configmap = yaml.safe_load((ARGOCD / "argocd-cm-health.yaml").read_text())
    assert configmap["metadata"]["name"] == "argocd-cm"
    for kind in KINDS:
        key = f"resource.customizations.health.tars.hyperlight.dev_{kind}"
        assert configmap["data"][key] == (HEALTH / kind / "health.lua").read_text(), (
            f"{key} in argocd-cm-health.yaml differs from health/tars.hyperlight.dev/{kind}/health.lua"
        )


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ARGOCD / name).read_text()) if d]


def test_applications_point_at_paths_in_this_repository() -> None:
    for name in ("application-operator.yaml", "application-workloads.yaml"):
        (app,) = _docs(name)
        assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
        assert (REPO / app["spec"]["source"]["path"]).is_dir(), app["spec"]["source"]["path"]
    (appset,) = _docs("applicationset.yaml")
    assert appset["kind"] == "ApplicationSet"
    assert "clusters" in appset["spec"]["generators"][0]
    assert (REPO / appset["spec"]["template"]["spec"]["source"]["path"]).is_dir()


def test_operator_application_values_satisfy_the_chart_schema() -> None:
    import jsonschema

    schema = json.loads((REPO / "charts" / "tars-operator" / "values.schema.json").read_text())
    (app,) = _docs("application-operator.yaml")
    jsonschema.Draft7Validator(schema).validate(app["spec"]["source"]["helm"]["valuesObject"])


def test_applicationset_parameters_are_chart_values() -> None:
    values = yaml.safe_load((REPO / "charts" / "tars-operator" / "values.yaml").read_text())
    (appset,) = _docs("applicationset.yaml")
    for parameter in appset["spec"]["template"]["spec"]["source"]["helm"]["parameters"]:
        node: Any = values
        for part in parameter["name"].split("."):
            assert isinstance(node, dict) and part in node, f"{parameter['name']} is not a chart value"
            node = node[part]


def test_workloads_application_syncs_valid_custom_resources() -> None:
    """What Argo CD would apply: the top-level files of the Application's path that match include."""
    (app,) = _docs("application-workloads.yaml")
    source = app["spec"]["source"]
    assert source["directory"]["recurse"] is False
    files = sorted((REPO / source["path"]).glob(source["directory"]["include"]))
    objects = [d for p in files for d in yaml.safe_load_all(p.read_text()) if d]
    nodes = [TarsNode.model_validate(o) for o in objects if o["kind"] == "TarsNode"]
    models = [TarsModel.model_validate(o) for o in objects if o["kind"] == "TarsModel"]
    assert nodes and models
    assert {m.spec.node_ref.name for m in models} <= {n.metadata.name for n in nodes}
    assert {o["kind"] for o in objects} <= {"TarsNode", "TarsModel"}
