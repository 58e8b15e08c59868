"""A real node (containerd + kubelet on this machine) beside the local control plane, and the
images `make images` builds, imported into it. Nothing is pulled from a registry."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tarsctl import realnode
from tests.fixtures import REPO, ControlPlane

REAL_NODE = "tars-real-1"


@pytest.fixture(scope="session")
def tars_images() -> list[str]:
    """Builds the images (make images: cached, so fast when nothing changed) and names the archives."""
    result = subprocess.run(["make", "-C", str(REPO), "images"], capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, f"make images failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    archives = sorted(p.name for p in realnode.images_dir().glob("*.oci.tar"))
    assert archives, f"make images wrote no archive into {realnode.images_dir()}"
    return archives


@pytest.fixture(scope="module")
def real_node(control_plane: ControlPlane, tars_images: list[str]) -> Iterator[realnode.NodePaths]:
    """One KVM-labelled real node for the module, stopped (and its Node deleted) afterwards, so later
    modules' DaemonSets never land on a node that is gone."""
    paths = realnode.add(control_plane.state, REAL_NODE, kvm=True, log=print)
    yield paths
    realnode.stop(paths, log=print)
    control_plane.kubectl("delete", "node", REAL_NODE, "--wait=false", check=False)
