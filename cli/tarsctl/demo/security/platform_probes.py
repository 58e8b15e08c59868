"""Attacks on the platform around the sandbox (issue 17): a guest that blocks in the host, user code
that writes the host while its function is built, objects the API cannot realise, and file://
sources that step outside the TarsNode's modelRoots. Each is judged from what the system did."""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tars_api import API_VERSION
from tarsctl import localcluster
from tarsctl.demo import system
from tarsctl.demo.security.base import CheckBase
from tarsctl.demo.security.hostile import BUILD_PROBE_CODE, probe_model
from tarsctl.demo.security.verdicts import (
    Attempt,
    _short,
    api_refused,
    blocking_contained,
    build_write_blocked,
    escape_blocked,
)

PASSWD_MARKER = "root:x:0:0"


@dataclass(frozen=True)
class Escape:
    """A function whose file:// source lies outside the TarsNode's modelRoots."""

    name: str
    attack: str
    path: str
    markers: list[str]  # text of the file that must never come back

    def doc(self, tarsnode: str) -> dict[str, Any]:
        return probe_model(self.name, tarsnode, source=f"file://{self.path}")


class PlatformProbes(CheckBase):
    # -- the API ------------------------------------------------------------------------------
    def _dry_run(self, doc: dict[str, Any]) -> tuple[bool, str]:
        """(refused, the API server's words) for creating ``doc``, validated but never stored."""
        result = localcluster.kubectl(
            self.t.state,
            "create",
            "--dry-run=server",
            "-n",
            self.t.namespace,
            "-f",
            "-",
            input=json.dumps(doc),
            check=False,
        )
        return result.returncode != 0, (result.stderr or result.stdout).strip()[-300:]

    def _refused(self, name: str, attack: str, doc: dict[str, Any]) -> Attempt:
        refused, said = self._dry_run(doc)
        return Attempt(name, attack, api_refused(refused), {"api_server_refused": refused, "api_server_said": said})

    def bad_names(self) -> list[Attempt]:
        """Names the operator cannot turn into a Service or a label value, and a negative quantity:
        accepted, such an object never gets a status and stalls the models reconciled after it."""
        model = lambda name: probe_model(name, self.t.tarsnode, source="builtin://sentiment-vader")  # noqa: E731
        node = {
            "apiVersion": API_VERSION,
            "kind": "TarsNode",
            "metadata": {"name": "tars-probe-bad-resources"},
            "spec": {"agent": {"resources": {"limits": {"memory": "-1Gi"}}}},
        }
        return [
            self._refused("bad-name-53", "a TarsModel named with 53 characters", model("m" * 53)),
            self._refused("bad-name-253", "a TarsModel named with 253 characters", model("m" * 253)),
            self._refused("bad-name-dots", "a TarsModel named with dots", model("tars.probe.dots")),
            self._refused("bad-node-resources", "a TarsNode whose agents ask for memory -1Gi", node),
        ]

    # -- file:// ------------------------------------------------------------------------------
    def _settle(self, name: str, timeout: float) -> dict[str, Any]:
        """The model once Ready or Degraded (or as it is at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            obj: dict[str, Any] = system.kubectl_json(self.t.state, "tarsmodel", name, "-n", self.t.namespace)
            degraded = (system.condition(obj, "Degraded") or {}).get("status") == "True"
            if system.is_ready(obj) or degraded or time.monotonic() > deadline:
                return obj
            time.sleep(1.0)

    def _submit(self, escape: Escape) -> tuple[bool, str]:
        """Tries to create the escaping model: (refused by the API, its words)."""
        refused, said = self._dry_run(escape.doc(self.t.tarsnode))
        if not refused:
            self.created.append(escape.name)
            system.apply_docs(self.t.state, self.t.namespace, [escape.doc(self.t.tarsnode)])
        return refused, said

    def _judge(self, escape: Escape, refused: bool, said: str, timeout: float) -> Attempt:
        evidence: dict[str, Any] = {"api_server_refused": refused, "api_server_said": said}
        ready = degraded = False
        texts = [said]
        if not refused:
            obj = self._settle(escape.name, timeout)
            ready = system.is_ready(obj)
            degraded = (system.condition(obj, "Degraded") or {}).get("status") == "True"
            texts.append(json.dumps(obj.get("status") or {}))
            evidence.update(ready=ready, degraded=degraded, status=_short(obj.get("status") or {}))
            if ready:
                url = system.model_url(self.t.gateway, escape.name, "invoke")
                code, answer = system.post_json(url, {}, timeout=30)
                texts.append(json.dumps(answer))
                evidence.update(invoke_status=code, invoke_answer=_short(answer))
        echoed = any(marker in text for marker in escape.markers for text in texts)
        evidence["content_echoed"] = echoed
        return Attempt(escape.name, escape.attack, escape_blocked(refused, ready, degraded, echoed), evidence)

    def file_escapes(self, timeout: float = 120) -> list[Attempt]:
        tarsnode = system.kubectl_json(self.t.state, "tarsnode", self.t.tarsnode, "-n", self.t.namespace)
        roots = tarsnode["spec"].get("modelRoots") or []
        secret = f"tars-secret-{secrets.token_hex(8)}"
        outside = Path(tempfile.mkdtemp(prefix="tars-escape-"))
        if any(outside.is_relative_to(Path(root)) for root in roots):
            raise RuntimeError(f"{outside} lies under the TarsNode's modelRoots {roots}: no outside left to try")
        stolen = outside / "stolen.py"
        # Valid Python: if the agent loads it, the function answers with the secret.
        stolen.write_text(f'SECRET = "{secret}"\n\n\ndef handle(input):\n    return {{"secret": SECRET}}\n')
        escapes = [
            Escape(
                "tars-probe-file-outside",
                f"a function from {stolen}, outside modelRoots {roots}",
                str(stolen),
                [secret],
            ),
            Escape(
                "tars-probe-file-passwd", "a function from /etc/passwd, never echoed", "/etc/passwd", [PASSWD_MARKER]
            ),
            Escape(
                "tars-probe-file-dotdot",
                "a function from file:///../../etc/passwd",
                "/../../etc/passwd",
                [PASSWD_MARKER],
            ),
        ]
        try:
            # All submitted first, then judged: the agents work on them at once.
            submitted = [(escape, *self._submit(escape)) for escape in escapes]
            attempts = [self._judge(escape, refused, said, timeout) for escape, refused, said in submitted]
        finally:
            stolen.unlink(missing_ok=True)
            outside.rmdir()
        configmap = probe_model("tars-probe-configmap-dotdot", self.t.tarsnode, source="configmap://fns/..")
        return [
            *attempts,
            self._refused(configmap["metadata"]["name"], "a function from ConfigMap key '..'", configmap),
        ]

    # -- build time ---------------------------------------------------------------------------
    def build_time_write(self, timeout: float = 300) -> Attempt:
        """A function whose top level, run by componentize-py at build time, writes a file into every
        directory on its sys.path (the host's site-packages among them, where a .pth file would run
        code in every later Python process) and reports what it managed."""
        token = secrets.token_hex(8)
        name = "tars-probe-build-write"
        doc = probe_model(name, self.t.tarsnode, code=BUILD_PROBE_CODE.replace("{token}", token))
        self.created.append(name)
        system.apply_docs(self.t.state, self.t.namespace, [doc])
        obj = self._settle(name, timeout)
        guest: Any = None
        if system.is_ready(obj):
            _, guest = system.post_json(system.model_url(self.t.gateway, name, "invoke"), {}, timeout=30)
        wrote = guest.get("wrote", []) if isinstance(guest, dict) else []
        found = _host_files(f"tars-build-probe-{token}.txt")
        for path in found:
            path.unlink(missing_ok=True)
        return Attempt(
            "build-time-write",
            "write beside the host's site-packages from a function's top level while it is built",
            build_write_blocked([str(p) for p in found]),
            {
                "model_ready": system.is_ready(obj),
                "guest_wrote_into": wrote,
                "found_on_host": [str(p) for p in found],
                "guest_read": guest.get("read", []) if isinstance(guest, dict) else _short(obj.get("status") or {}),
            },
        )

    # -- blocking in the host -----------------------------------------------------------------
    def blocking_guest(self) -> Attempt:
        """Guests that sleep in the host (a WASI poll), more at once than the agents have workers:
        they must be stopped at the wall-clock limit and leave the agents serving."""
        count, sleep_s = self.limits.blocking_requests, self.limits.blocking_sleep_s
        started = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            blocked = list(
                pool.map(lambda _: self._invoke({"do": "sleep", "s": sleep_s}, timeout=sleep_s + 30), range(count))
            )
        held_s = time.perf_counter() - started
        neighbour_url = system.model_url(self.t.gateway, self.neighbour, self.limits.neighbour_route)
        after = []
        for _ in range(5):
            began = time.perf_counter()
            status, _ = system.post_json(neighbour_url, self.limits.neighbour_body, timeout=15)
            after.append((status, (time.perf_counter() - began) * 1000))
        alive = self._alive()
        return Attempt(
            "blocking-guest",
            f"{count} guests sleeping {sleep_s:g} s in the host at once, then the neighbour {self.neighbour}",
            blocking_contained([s for s, _, _ in blocked], held_s, sleep_s, [s for s, _ in after], alive),
            {
                "blocking_statuses": sorted({s for s, _, _ in blocked}),
                "blocking_answered_within_s": round(held_s, 1),
                "neighbour_after": [{"status": s, "ms": round(ms, 1)} for s, ms in after],
                "agents_alive": alive,
            },
        )


def _host_files(name: str) -> list[Path]:
    """Files called ``name`` in any directory this host's Python imports from, or under the guest
    build cache (where the function's app directory lies). Agents on other hosts are not searched:
    there, the guest's own account is the evidence."""
    import site

    from tars_guests.build import cache_dir

    directories = {Path(p) for p in [*sys.path, *site.getsitepackages(), site.getusersitepackages()] if p}
    found = [d / name for d in directories if (d / name).exists()]
    return found + sorted(cache_dir().rglob(name)) if cache_dir().is_dir() else found
