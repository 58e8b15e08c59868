"""A minimal OCI image archive (image layout in a tar) from a few files, with no registry and no
image tool: the local real node needs a sandbox ("pause") image and nothing may be pulled.

Deterministic: the same files give the same digests (fixed mtimes, owners and order).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class File:
    data: bytes
    mode: int = 0o644


def _tar(members: dict[str, bytes | File]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            member = members[name]
            file = member if isinstance(member, File) else File(member)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(file.data), file.mode, 0
            tar.addfile(info, io.BytesIO(file.data))
    return buffer.getvalue()


def _descriptor(media_type: str, blob: bytes, blobs: dict[str, bytes]) -> dict:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    blobs[f"blobs/sha256/{digest.removeprefix('sha256:')}"] = blob
    return {"mediaType": media_type, "digest": digest, "size": len(blob)}


def image_archive(reference: str, files: dict[str, File], entrypoint: list[str]) -> bytes:
    """An OCI archive holding one linux/amd64 image of `files` (paths without a leading /), named
    `reference` the way `ctr images import` reads names."""
    blobs: dict[str, bytes] = {}
    layer = _tar(dict(files))
    layer_desc = _descriptor(LAYER, layer, blobs)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = _descriptor(CONFIG, json.dumps(config, sort_keys=True).encode(), blobs)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config_desc, "layers": [layer_desc]}
    manifest_desc = _descriptor(MANIFEST, json.dumps(manifest, sort_keys=True).encode(), blobs)
    tag = reference.rpartition(":")[2]
    manifest_desc["annotations"] = {"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]}
    return _tar(
        {
            "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
            "index.json": json.dumps(index, sort_keys=True).encode(),
            **blobs,
        }
    )


def write_image_archive(path: Path, reference: str, files: dict[str, File], entrypoint: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(image_archive(reference, files, entrypoint))
    tmp.replace(path)
    return path
