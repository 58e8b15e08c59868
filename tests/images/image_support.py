"""Reading the Containerfile's stages and the OCI archive `make images` writes (no container tools)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "Containerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args_of(self, instruction: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == instruction]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # also inside a continued instruction, as Docker reads it
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    result = []
    for line in logical:
        ins, _, args = line.partition(" ")
        result.append((ins.upper(), args.strip()))
    return result


def stages(text: str) -> tuple[list[tuple[str, str]], list[Stage]]:
    """The instructions before the first FROM (global ARGs), and each stage."""
    preamble: list[tuple[str, str]] = []
    found: list[Stage] = []
    for ins, args in instructions(text):
        if ins == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert match, f"unreadable FROM {args!r}"
            found.append(Stage(base=match[1], name=match[2]))
        elif found:
            found[-1].instructions.append((ins, args))
        else:
            preamble.append((ins, args))
    return preamble, found


def images_script(*args: str) -> str:
    return subprocess.run(
        ["bash", str(ROOT / "hack" / "images.sh"), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def buildah(*args: str) -> str:
    """buildah on the storage `make images` builds in (no daemon)."""
    result = subprocess.run(
        ["bash", str(ROOT / "hack" / "images.sh"), "buildah", *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr[-3000:]}"
    return result.stdout.strip()


class OciArchive:
    """An OCI image layout in a tar file: index -> manifest -> config and layers."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def member(self, name: str) -> bytes:
        with tarfile.open(self.path) as outer:
            member = outer.extractfile(name)
            assert member is not None, name
            return member.read()

    def blob(self, digest: str) -> bytes:
        algorithm, _, hexdigest = digest.partition(":")
        return self.member(f"blobs/{algorithm}/{hexdigest}")

    def json(self, name: str) -> Any:
        return json.loads(self.member(name))

    def layers(self) -> Iterator[tarfile.TarFile]:
        """Each layer as a streamed tar, bottom first."""
        for layer in self.manifest()[1]["layers"]:
            with tarfile.open(fileobj=io.BytesIO(self.blob(layer["digest"])), mode="r|*") as stream:
                yield stream

    def manifest(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(descriptor in index.json, manifest) of the archive's only image."""
        index = self.json("index.json")
        assert len(index["manifests"]) == 1, index
        descriptor = index["manifests"][0]
        return descriptor, json.loads(self.blob(descriptor["digest"]))

    def config(self) -> dict[str, Any]:
        return json.loads(self.blob(self.manifest()[1]["config"]["digest"]))

    def files(self) -> dict[str, tarfile.TarInfo]:
        """The final filesystem's entries (later layers win; whiteouts remove)."""
        entries: dict[str, tarfile.TarInfo] = {}
        for stream in self.layers():
            for info in stream:
                name = "/" + info.name.lstrip("./").rstrip("/")
                parent, _, base = name.rpartition("/")
                if base.startswith(".wh."):
                    gone = f"{parent}/{base[4:]}"
                    entries = {k: v for k, v in entries.items() if k != gone and not k.startswith(gone + "/")}
                else:
                    entries[name] = info
        return entries

    def read(self, path: str) -> bytes:
        """A file's bytes from the last layer that has it."""
        found: bytes | None = None
        for stream in self.layers():
            for info in stream:
                if "/" + info.name.lstrip("./") == path and info.isfile():
                    data = stream.extractfile(info)
                    assert data is not None
                    found = data.read()
        assert found is not None, f"{path} not in {self.path}"
        return found
