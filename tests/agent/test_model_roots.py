"""file:// sources are confined to the TarsNode's spec.modelRoots (issue 17, item 4), checked by a real agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tars_agent.agent import Agent, AgentConfig
from tars_agent.capabilities import ModelKey
from tars_agent.model_roots import SourceOutsideRoots, confine
from tars_guests.testapps import HOSTILE_APP

from .conftest import TEST_LIMITS, SharedBackend, tars_model

SECRET = "s3cret-host-content-that-must-never-be-echoed"


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """(a model root, a secret file outside it), and inside the root a symlink and a .. path to the secret."""
    root = tmp_path / "models"
    root.mkdir()
    (root / "fine.py").write_text("def handle(x):\n    return x\n")
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (root / "link.py").symlink_to(secret)
    return root, secret


def test_no_roots_refuses_every_file_source(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    with pytest.raises(SourceOutsideRoots, match=r"no spec\.modelRoots"):
        confine(root / "fine.py", ())


def test_paths_are_resolved_before_the_check(roots: tuple[Path, Path]) -> None:
    root, secret = roots
    assert confine(root / "fine.py", (root,)) == (root / "fine.py").resolve()
    for escape in (root / "link.py", root / ".." / "secret.txt", Path("/etc/shadow"), Path("/proc/self/environ")):
        with pytest.raises(SourceOutsideRoots) as refused:
            confine(escape, (root,))
        assert SECRET not in str(refused.value)
    # A root that is a prefix of the name but not a parent directory does not admit it.
    with pytest.raises(SourceOutsideRoots):
        confine(secret, (Path(str(root)[: -len("models")] + "mod"),))


async def test_agent_refuses_escapes_without_echoing_content(backend: SharedBackend, roots: tuple[Path, Path]) -> None:
    root, secret = roots
    agent = Agent(
        AgentConfig(workers=2, warm_pool_size=1, node_limits=TEST_LIMITS, model_roots=(root, HOSTILE_APP.parent)),
        backend,
    )
    try:
        # (`..` never reaches an agent: the API refuses it, and confine() is checked above.)
        escapes = {
            "shadow": "file:///etc/shadow",
            "environ": "file:///proc/self/environ",
            "link": f"file://{root}/link.py",
            "secret": f"file://{secret}",
        }
        for name, source in escapes.items():
            assert not await agent.ensure_loaded(tars_model(name, source))
            reason = agent.repository.failed[ModelKey("default", name)]
            assert "refused" in reason and SECRET not in reason and "root:" not in reason, reason
        # A guest app under an allowed root loads.
        assert await agent.ensure_loaded(tars_model("hostile", f"file://{HOSTILE_APP}"))
    finally:
        agent.close()


async def test_agent_without_roots_refuses_file_sources(backend: SharedBackend) -> None:
    agent = Agent(AgentConfig(workers=1, warm_pool_size=1, node_limits=TEST_LIMITS), backend)
    try:
        assert not await agent.ensure_loaded(tars_model("hostile", f"file://{HOSTILE_APP}"))
        assert "no spec.modelRoots" in agent.repository.failed[ModelKey("default", "hostile")]
    finally:
        agent.close()
