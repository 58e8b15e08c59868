"""Telling the operator's own writes, echoed back by a watch, from edits by others."""

from __future__ import annotations

from typing import Any

from tars_api.labels import FIELD_MANAGER
from tars_operator.kube import written_last_by


def obj(*entries: tuple[str, str, str | None]) -> dict[str, Any]:
    fields = [{"manager": m, "time": t, **({"subresource": s} if s else {})} for m, t, s in entries]
    return {"metadata": {"managedFields": fields}}


def test_the_operators_own_apply_is_an_echo() -> None:
    assert written_last_by(obj((FIELD_MANAGER, "2026-01-01T00:00:05Z", None)))


def test_a_status_update_after_the_apply_is_still_an_echo() -> None:
    moved = obj(
        (FIELD_MANAGER, "2026-01-01T00:00:05Z", None), ("kube-controller-manager", "2026-01-01T00:00:09Z", "status")
    )
    assert written_last_by(moved)


def test_a_later_edit_by_hand_is_not() -> None:
    edited = obj((FIELD_MANAGER, "2026-01-01T00:00:05Z", None), ("kubectl-patch", "2026-01-01T00:00:09Z", None))
    assert not written_last_by(edited)


def test_an_edit_in_the_same_second_counts_as_an_edit() -> None:
    tie = obj((FIELD_MANAGER, "2026-01-01T00:00:05Z", None), ("kubectl-edit", "2026-01-01T00:00:05Z", None))
    assert not written_last_by(tie)


def test_an_object_without_managed_fields_is_not_an_echo() -> None:
    assert not written_last_by({"metadata": {}})
