"""The README's walk through users' functions in Python, JavaScript, Rust and C, run as written on the
local control plane: its ``make`` and ``tarsctl fn`` lines, by the real ``tarsctl`` and ``make``, against
a real operator and a real tars-agent in cluster mode (the fixtures stand for the README's setup lines;
the test puts ``--namespace`` on each deploy and its agent's URL in place of port 8080). Then what the
README says around it: refused capabilities come back to the function as errors, a failing function
comes back as HTTP 422, bad files are refused at deploy and change nothing, and an agent without
Node.js (the tars image's) refuses JavaScript functions saying why, in the TarsModel's status.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import ControlPlane
from tests.functions.conftest import REPO, cluster_agent_process

pytestmark = pytest.mark.usefixtures("operator")
README_AGENT = "http://127.0.0.1:8080"
TARSNODE = {"apiVersion": "tars.hyperlight.dev/v1alpha1", "kind": "TarsNode", "metadata": {"name": "tars"}, "spec": {}}
JS_EXAMPLE = REPO / "guests" / "examples" / "js" / "greeter.js"
# The greeters' answers to the README's inputs, with clock.now granted.
GREETINGS = {"greeter-py": ("python", "bonjour, Ada"), "greeter-js": ("javascript", "bonjour, Ada")}
GREETINGS["greeter-c"] = ("c", "hallo, Ada")
# A C program built as a WASI command: a valid component, of the wrong world (it exports wasi:cli/run).
WRONG_WORLD_C = '#include <stdio.h>\nint main(void) { puts("not a function"); return 0; }\n'


def readme_walkthrough() -> list[list[str]]:
    """The ``make`` and ``tarsctl fn`` lines of the README's functions walk-through, as argv lists."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Your own functions") :]
    block = section[section.index("```bash\ntarsctl cluster up") :]
    block = block[: block.index("\n```\n")]
    lines = [shlex.split(line) for line in block.splitlines() if line.startswith(("tarsctl fn ", "make examples-"))]
    assert len(lines) == 10, lines  # 4 deploys, 4 invokes, 2 builds: a changed README changes this test
    return lines


class Shell:
    """Runs commands from the repository's root as a user's shell would, with the test's KUBECONFIG."""

    def __init__(self, control_plane: ControlPlane, namespace: str, agent: str) -> None:
        self.env = {**control_plane.env, "PYTHON": os.environ.get("PYTHON", "python3")}
        self.namespace, self.agent = namespace, agent

    def __call__(self, argv: list[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        argv = [self.agent if arg == README_AGENT else arg for arg in argv]
        if argv[:3] == ["tarsctl", "fn", "deploy"]:
            argv += ["--namespace", self.namespace]
        assert shutil.which(argv[0]), f"{argv[0]} is not on PATH (make install puts tarsctl there)"
        return subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)

    def ok(self, argv: list[str]) -> str:
        result = self(argv)
        assert result.returncode == 0, f"{shlex.join(argv)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        return result.stdout


def objects(control_plane: ControlPlane, namespace: str) -> dict[str, Any]:
    """Every ConfigMap and TarsModel of the namespace, by kind/name, with what a deploy would change (not
    the resourceVersion: the operator's status writes move it)."""
    found = control_plane.get_json("configmaps,tarsmodels", "-n", namespace)["items"]
    return {f"{o['kind']}/{o['metadata']['name']}": [o.get("data"), o.get("binaryData"), o.get("spec")] for o in found}


@pytest.fixture(scope="module")
def wrong_world_component(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wrong-world")
    (out / "hello.c").write_text(WRONG_WORLD_C)
    script = f"""
        eval "$(bash {shlex.quote(str(REPO / "hack" / "guest-toolchains.sh"))} c --print-env)"
        "$CLANG" --target=wasm32-wasi --sysroot="$WASI_SYSROOT" -O2 -o core.wasm hello.c
        node "$JCO" new core.wasm --wasi-command -o hello.wasm
    """
    built = subprocess.run(["bash", "-c", script], cwd=out, capture_output=True, text=True, timeout=1800)
    assert built.returncode == 0, built.stderr[-4000:]
    return out / "hello.wasm"


def test_the_readme_walkthrough_in_four_languages(
    control_plane: ControlPlane, namespace: str, cluster_agent: str, wrong_world_component: Path, tmp_path: Path
) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(TARSNODE))
    shell = Shell(control_plane, namespace, cluster_agent)
    answers: dict[str, Any] = {}
    deployed: dict[str, list[str]] = {}
    for argv in readme_walkthrough():
        out = shell.ok(argv)
        if argv[:3] == ["tarsctl", "fn", "deploy"]:
            name = argv[argv.index("--name") + 1]
            deployed[name] = argv
            assert f"tarsmodel/{name}: Serving" in out, out
        elif argv[:3] == ["tarsctl", "fn", "invoke"]:
            answers[argv[3]] = json.loads(out)

    assert set(answers) == {*GREETINGS, "textstats"}
    for name, (language, greeting) in GREETINGS.items():
        assert answers[name]["language"] == language and answers[name]["greeting"] == greeting, answers[name]
        assert isinstance(answers[name]["clock"]["unix"], float), answers[name]  # clock.now was granted
    assert answers["textstats"]["language"] == "rust"
    assert answers["textstats"]["top"][:2] == [{"word": "a", "count": 2}, {"word": "rose", "count": 2}]

    # The same greeters without the capability: the refused call comes back to them as an error.
    for name in GREETINGS:
        without = [arg for arg in deployed[name] if arg not in ("--capability", "clock.now")]
        without[without.index("--name") + 1] = f"{name}-nocap"
        shell.ok(without)
        invoke = ["tarsctl", "fn", "invoke", f"{name}-nocap", "--data", '{"name": "Ada"}', "--agent", cluster_agent]
        answer = json.loads(shell.ok(invoke))
        assert answer["greeting"] == "hello, Ada", answer
        expected = f"capability clock.now is not allowed for model {namespace}/{name}-nocap"
        assert expected in answer["clock"]["refused"], answer
        # A function that fails (no "name") comes back as HTTP 422 with its own message.
        failed = shell(["tarsctl", "fn", "invoke", name, "--data", '{"lang": "fr"}', "--agent", cluster_agent])
        assert failed.returncode == 1 and "HTTP 422: " in failed.stderr, failed.stderr
        assert 'input needs a "name" string' in str(json.loads(failed.stderr.split("HTTP 422: ", 1)[1])), failed.stderr

    # Bad files are refused at deploy with the reason, and nothing in the cluster changes.
    before = objects(control_plane, namespace)
    commonjs = tmp_path / "greeter.js"
    commonjs.write_text("function handle(input) { return input; }\nmodule.exports = { handle };\n")
    refusals = {
        str(commonjs): ("greeter-js", "refused: greeter.js: exports no handle"),
        str(wrong_world_component): ("greeter-c", "refused: hello.wasm: exports no `handle` function (exports: wasi"),
    }
    for path, (name, message) in refusals.items():
        for target in (name, f"new-{name}"):  # over a working function, and as a new one
            refused = shell(["tarsctl", "fn", "deploy", path, "--name", target, "--node", "tars", "--wait", "60"])
            assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert objects(control_plane, namespace) == before
    for name in ("greeter-js", "greeter-c"):  # and the functions they would have replaced still answer
        again = shell.ok(["tarsctl", "fn", "invoke", name, "--data", '{"name": "Ada"}', "--agent", cluster_agent])
        assert json.loads(again)["greeting"] == "hello, Ada"


def test_an_agent_without_nodejs_refuses_javascript_saying_why(
    control_plane: ControlPlane, namespace: str, simulated_nodes: tuple[str, ...], tmp_path: Path
) -> None:
    """The tars image ships no Node.js: its agents refuse a JavaScript function, and the TarsModel's
    status says so (not InvalidFunction: the function is fine, the agent cannot build it)."""
    # As in the image: the agent's PATH holds only what it runs besides Python (the build sandbox's
    # tools), no node and no npm, and no JavaScript toolchain was installed.
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("unshare", "mount", "setpriv"):
        (tools / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    # A source no earlier build has cached, as on a fresh image's agent.
    source = tmp_path / "greeter.js"
    source.write_text(f"// {namespace}\n" + JS_EXAMPLE.read_text())
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(TARSNODE))
    image_like = {"PATH": str(tools), "TARS_JS_TOOLCHAIN": str(tmp_path / "no-toolchain")}
    log = tmp_path / "agent.log"
    with cluster_agent_process(control_plane, namespace, simulated_nodes[1], log, image_like) as agent:
        shell = Shell(control_plane, namespace, agent)
        deploy = ["tarsctl", "fn", "deploy", str(source), "--name", "greeter-js", "--node", "tars", "--wait", "300"]
        result = shell(deploy)
        assert result.returncode == 1, (result.stdout, result.stderr)
        reason = "JavaScriptUnavailable: this agent cannot build JavaScript functions: Node.js (node) not found"
        assert "LoadFailed" in result.stderr and reason in result.stderr, result.stderr
        model = control_plane.get_json("tarsmodel", "greeter-js", "-n", namespace)
        degraded = next(c for c in model["status"]["conditions"] if c["type"] == "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "LoadFailed", degraded
        assert f"agent on {simulated_nodes[1]}: {reason}" in degraded["message"], degraded
        assert "the tars image ships neither Node.js nor componentize-js" in degraded["message"]
        refused = shell(["tarsctl", "fn", "invoke", "greeter-js", "--data", '{"name": "Ada"}', "--agent", agent])
        assert refused.returncode == 1 and "HTTP" in refused.stderr, refused.stderr
