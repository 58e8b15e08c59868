"""Confines ``file://`` model sources to the directories the TarsNode allows (``spec.modelRoots``).

The API's CEL rules can only look at the text of a source; the agent checks the path as the node
sees it, after following symlinks and ``..``, so a link inside a root that points at ``/etc/shadow``
is refused like the path itself. No roots (the default) refuses every ``file://`` source.

Refusals name the path and the roots, never anything read from the file: nothing is read before
the check passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class SourceOutsideRoots(PermissionError):
    """A file:// source that resolves outside every allowed model root."""


def confine(path: Path, roots: Sequence[Path]) -> Path:
    """``path`` resolved (symlinks and ``..`` followed) if it lies under one of ``roots``; else refused."""
    if not roots:
        raise SourceOutsideRoots(
            f"file://{path} refused: the TarsNode lists no spec.modelRoots, so no file:// source may load"
        )
    resolved = Path(path).resolve()
    for root in roots:
        if resolved.is_relative_to(Path(root).resolve()):
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise SourceOutsideRoots(f"file://{path} refused: it is not under the TarsNode's spec.modelRoots ({allowed})")
