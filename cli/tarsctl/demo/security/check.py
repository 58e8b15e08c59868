"""The security check: deploys the hostile function (and a neighbour if the namespace has none),
runs every probe, and cleans up."""

from __future__ import annotations

import time
from collections.abc import Callable

from tars_api import API_VERSION
from tarsctl import localcluster
from tarsctl.demo import system
from tarsctl.demo.security.hostile import NEIGHBOUR_FALLBACK, hostile_model
from tarsctl.demo.security.platform_probes import PlatformProbes
from tarsctl.demo.security.sandbox_probes import SandboxProbes
from tarsctl.demo.security.verdicts import Attempt, SecurityReport

# A progress label and the probe it names.
Step = tuple[str, Callable[[], Attempt | list[Attempt] | None]]


class SecurityCheck(SandboxProbes, PlatformProbes):
    ready_timeout: float = 300

    def deploy(self, timeout: float = 300) -> None:
        self.ready_timeout = timeout
        replicas = max(1, len(self._agents()))
        docs = [hostile_model(self.hostile, self.t.tarsnode, replicas, self.granted, self.limits)]
        if not self._exists(self.neighbour):
            # security-check run alone against a namespace without the neighbour: bring our own.
            self.neighbour = NEIGHBOUR_FALLBACK
            docs.append(
                {
                    "apiVersion": API_VERSION,
                    "kind": "TarsModel",
                    "metadata": {"name": self.neighbour},
                    "spec": {
                        "nodeRef": {"name": self.t.tarsnode},
                        "kind": "sentiment",
                        "source": "builtin://sentiment-vader",
                        "memoryMiB": 32,
                        "replicas": replicas,
                    },
                }
            )
            self.limits = self.limits.model_copy(update={"neighbour_route": "infer"})
        self.created = [d["metadata"]["name"] for d in docs]
        system.apply_docs(self.t.state, self.t.namespace, docs)
        deadline = time.monotonic() + timeout
        for name in self.created:
            route = "invoke" if name == self.hostile else self.limits.neighbour_route
            body = {"do": "ping"} if name == self.hostile else self.limits.neighbour_body
            url = system.model_url(self.t.gateway, name, route)
            while True:
                ready = system.is_ready(system.kubectl_json(self.t.state, "tarsmodel", name, "-n", self.t.namespace))
                if ready and system.post_json(url, body, timeout=30)[0] == 200:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not become Ready and answer within {timeout:.0f}s")
                time.sleep(0.5)

    def cleanup(self) -> None:
        for name in self.created:
            localcluster.kubectl(
                self.t.state, "delete", "tarsmodel", name, "-n", self.t.namespace, "--wait=false", check=False
            )

    def steps(self) -> list[Step]:
        return [
            ("reading a host file", self.host_file),
            ("opening a socket", self.open_socket),
            ("allocating past the memory limit", self.memory),
            ("an infinite loop", self.infinite_loop),
            ("an output flood", self.output_flood),
            ("malicious input", self.hostile_inputs),
            ("prompt injection", self.prompt_injection),
            ("CPU burners beside a neighbour", self.resource_exhaustion),
            ("exfiltration via log.write", lambda: self.exfiltration("log.write", {"message": "$SECRET"})),
            (
                "exfiltration via knowledge.query",
                lambda: self.exfiltration("knowledge.query", {"query": "$SECRET", "top_k": 5}),
            ),
            ("names the API cannot realise", self.bad_names),
            ("file:// outside the model roots", lambda: self.file_escapes(self.ready_timeout)),
            ("writing the host at build time", lambda: self.build_time_write(self.ready_timeout)),
            # Last: where guests are not stopped, it wedges the agents for the rest of the run.
            ("guests blocking in the host", self.blocking_guest),
        ]

    def run(self, steps: list[Step] | None = None) -> SecurityReport:
        """Every probe, or the ``steps`` given (a selection of :meth:`steps`)."""
        attempts: list[Attempt] = []
        for label, step in self.steps() if steps is None else steps:
            self.progress(label)
            outcome = step()
            if isinstance(outcome, list):
                attempts += outcome
            elif outcome is not None:
                attempts.append(outcome)
        return SecurityReport(attempts, self.model_key, self.granted, self.neighbour)
