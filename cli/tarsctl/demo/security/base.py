"""Where the check runs and how it reaches the system: the plumbing every probe shares."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tarsctl import localcluster
from tarsctl.demo import system
from tarsctl.demo.plan import SecurityPlan
from tarsctl.demo.security.hostile import HOSTILE_NAME


@dataclass
class Target:
    """Where the check runs: a namespace, its TarsNode, the gateway, and optionally agent logs."""

    state: localcluster.ClusterState
    namespace: str
    tarsnode: str
    gateway: str
    agent_logs: list[Path] = field(default_factory=list)


class CheckBase:
    def __init__(
        self,
        target: Target,
        limits: SecurityPlan,
        granted: list[str] | None = None,
        progress: Callable[[str], None] = lambda _: None,
        workdir: Path | None = None,
        hostile_name: str = HOSTILE_NAME,
    ) -> None:
        self.t = target
        self.limits = limits
        self.granted = sorted(granted or [])
        self.progress = progress
        self.workdir = workdir or Path("/tmp")
        self.hostile = hostile_name
        self.model_key = f"{target.namespace}/{self.hostile}"
        self.neighbour = limits.neighbour
        self.created: list[str] = []

    # -- plumbing ---------------------------------------------------------------------------
    def _agents(self) -> list[system.AgentInfo]:
        return system.agents(self.t.state, self.t.namespace, self.t.tarsnode)

    def _alive(self) -> bool:
        agents = self._agents()
        for agent in agents:
            try:
                with system.urllib.request.urlopen(f"http://{agent.address}/v2/health/live", timeout=5) as r:
                    if r.status != 200:
                        return False
            except OSError:
                return False
        return bool(agents)

    def _metrics(self) -> system.Samples:
        total: system.Samples = {}
        for agent in self._agents():
            for key, value in system.scrape(agent.address).items():
                total[key] = total.get(key, 0.0) + value
        return total

    def _invoke(self, body: Any, timeout: float = 60) -> tuple[int, Any, float]:
        started = time.perf_counter()
        status, answer = system.post_json(
            system.model_url(self.t.gateway, self.hostile, "invoke"), body, timeout=timeout
        )
        return status, answer, (time.perf_counter() - started) * 1000

    def _logs_contain(self, text: str) -> bool:
        return any(text in p.read_text(errors="replace") for p in self.t.agent_logs if p.exists())

    def _audit_lines(self, capability: str, since: float) -> list[str]:
        """The agents' audit log lines about this model's calls to ``capability`` since ``since``."""
        lines = []
        for path in self.t.agent_logs:
            if path.exists():
                for line in path.read_text(errors="replace").splitlines():
                    if "tars_agent.audit" not in line or self.model_key not in line or f'"{capability}"' not in line:
                        continue
                    try:
                        stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    except ValueError:
                        continue
                    if stamp >= since - 0.5:
                        lines.append(line[-240:])
        return lines[-3:]

    def _exists(self, name: str) -> bool:
        result = localcluster.kubectl(
            self.t.state, "get", "tarsmodel", name, "-n", self.t.namespace, "-o", "name", check=False
        )
        return result.returncode == 0

    def _failure_counts(self, before: system.Samples, after: system.Samples, reason: str) -> float:
        name = "tars_agent_guest_failures_total"
        return system.metric_sum(after, name, model=self.model_key, reason=reason) - system.metric_sum(
            before, name, model=self.model_key, reason=reason
        )
