"""The agent pod's init container gives the node's state directory to the agent's user, with root's
CAP_CHOWN only, and must keep working on every later start of the pod (the directory is then no
longer root's). Its command runs here for real under setpriv with the same capability set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tars_operator.builders import AGENT_UID, state_dir_owner


def run_init_container(directory: Path) -> subprocess.CompletedProcess[str]:
    spec = state_dir_owner("image", "IfNotPresent")
    assert spec["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    command = [sys.executable, *spec["command"][1:]]
    command[-2] = str(directory)  # the mount path, here a temporary directory
    only_chown = ["setpriv", "--inh-caps=-all,+chown", "--bounding-set=-all,+chown", "--"]
    return subprocess.run([*only_chown, *command], capture_output=True, text=True, timeout=60)


def test_the_state_directory_is_given_once_and_later_starts_still_succeed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    first = run_init_container(state)
    assert first.returncode == 0, first.stderr
    assert (state.stat().st_uid, state.stat().st_mode & 0o777) == (AGENT_UID, 0o700)
    again = run_init_container(state)  # the pod restarts: the directory is the agent's already
    assert again.returncode == 0, again.stderr
    assert state.stat().st_uid == AGENT_UID
