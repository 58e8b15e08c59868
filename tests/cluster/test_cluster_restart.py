"""`tarsctl cluster up` after a component died restarts it and keeps the cluster: the same CA, the
same port, the same etcd data; a kubeconfig handed out before still works. Only `down` wipes.

It runs its own control plane in its own directory (the session's one is shared by other tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tarsctl import localcluster


def _kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(localcluster.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.cluster
def test_up_restarts_what_died_and_keeps_the_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TARS_CLUSTER_DIR", str(tmp_path / "cluster"))
    state = localcluster.up(log=print)
    try:
        handed_out = tmp_path / "kubeconfig-handed-out"
        handed_out.write_bytes(state.kubeconfig.read_bytes())
        ca = (state.path / "pki" / "ca.crt").read_bytes()
        created = _kubectl(handed_out, "create", "configmap", "survivor", "-n", "default", "--from-literal=k=v")
        assert created.returncode == 0, created.stderr
        for name in ("etcd", "kube-apiserver"):
            os.kill(state.pids[name], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while localcluster.running() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert localcluster.running() is None

        again = localcluster.up(log=print)

        assert again.apiserver_port == state.apiserver_port
        assert (again.path / "pki" / "ca.crt").read_bytes() == ca
        assert localcluster.running() is not None
        kept = _kubectl(handed_out, "get", "configmap", "survivor", "-n", "default", "-o", "jsonpath={.data.k}")
        assert kept.returncode == 0 and kept.stdout == "v", kept.stderr
    finally:
        localcluster.down(quiet=True)
    assert not (tmp_path / "cluster" / "state.json").exists()
