"""The demo's phases: init, load, benchmark, security, cost, report.

Each phase shows a rich progress bar over its steps and ends with a result table; every number in
the tables and in the report is measured in this run (the original project's published figures are
shown beside ours, labelled as its claims, and used in no calculation).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tarsctl import localcluster
from tarsctl.demo import baseline, claims, cost, measure, recommend, report, security, system, tables
from tarsctl.demo.plan import BenchmarkCase, Plan
from tarsctl.fleet import Fleet
from tarsctl.models import make_synthetic

REPO = Path(__file__).resolve().parents[3]
SYNTHETIC_PREFIX = "file:///var/lib/tars/models/"
AGENT_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*loaded model (\S+) ")


@dataclass
class Options:
    plan: Plan
    report_dir: Path
    keep: bool = False
    local: bool = False
    namespace: str | None = None
    agents: int | None = None
    workdir: Path | None = None
    # Use these existing nodes instead of registering simulated ones (tests share the session's).
    nodes: list[str] | None = None
    # The namespace exists already and is not ours to create or delete.
    existing_namespace: bool = False


@dataclass
class Run:
    """Everything measured, in the shape report.json has."""

    data: dict[str, Any] = field(default_factory=dict)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@contextlib.contextmanager
def phase(console: Console, title: str, total: int) -> Iterator[Any]:
    """A progress bar for one phase; yields advance(step_label)."""
    console.rule(f"[bold cyan]{title}")
    with _progress(console) as bar:
        task = bar.add_task(title, total=total, step="")

        def advance(step: str, done: bool = False) -> None:
            if done:
                bar.advance(task)
            bar.update(task, step=step)

        yield advance
        bar.update(task, completed=total, step="done")


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def model_documents(plan: Plan, checkpoints: Path) -> list[dict[str, Any]]:
    """The plan's TarsModels: filtered, overridden, synthetic sources pointing at ``checkpoints``."""
    docs = []
    for manifest in plan.manifests:
        for doc in yaml.safe_load_all(manifest.read_text()):
            if not doc or doc.get("kind") != "TarsModel":
                continue
            name = doc["metadata"]["name"]
            if plan.models and name not in plan.models:
                continue
            source = doc["spec"].get("source") or ""
            if source.startswith(SYNTHETIC_PREFIX):
                doc["spec"]["source"] = f"file://{checkpoints / source.removeprefix(SYNTHETIC_PREFIX)}"
            if name in plan.overrides:
                doc["spec"] = _deep_merge(doc["spec"], plan.overrides[name])
            docs.append(doc)
    return docs


class Demo:
    def __init__(self, options: Options, console: Console | None = None) -> None:
        self.o = options
        self.plan = options.plan
        self.console = console or Console()
        self.namespace = options.namespace or self.plan.namespace
        self.agent_count = len(options.nodes) if options.nodes else options.agents or self.plan.agents
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix="tars-demo-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tarsnode_doc = next(
            d for d in yaml.safe_load_all(self.plan.tarsnode.read_text()) if d and d.get("kind") == "TarsNode"
        )
        self.tarsnode = self.tarsnode_doc["metadata"]["name"]
        # The synthetic checkpoints are written under the workdir: let the agents load from there.
        spec = self.tarsnode_doc.setdefault("spec", {})
        spec["modelRoots"] = [*spec.get("modelRoots", []), str(self.workdir / "models")]
        self.state: localcluster.ClusterState | None = None
        self.fleet: Fleet | None = None
        self.nodes: list[str] = []
        self.created_nodes: list[str] = []
        self.created_namespace = False
        self.run = Run()
        self.models: list[dict[str, Any]] = []

    # -- helpers ------------------------------------------------------------------------------
    @property
    def gateway(self) -> str:
        assert self.fleet is not None
        return f"http://127.0.0.1:{self.fleet.processes['gateway'].port}"

    def _kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        assert self.state is not None
        return localcluster.kubectl(self.state, *args, input=input, check=check)

    def _get(self, kind: str, name: str) -> dict[str, Any]:
        assert self.state is not None
        found: dict[str, Any] = system.kubectl_json(self.state, kind, name, "-n", self.namespace)
        return found

    def _agent_pids(self) -> dict[str, int]:
        assert self.fleet is not None
        return {
            n.removeprefix("agent-"): p.popen.pid for n, p in self.fleet.processes.items() if n.startswith("agent-")
        }

    def _agent_rss(self) -> dict[str, float]:
        return {node: system.rss_mib(pid) for node, pid in self._agent_pids().items()}

    def _agent_logs(self) -> list[Path]:
        assert self.fleet is not None
        return [p.log for n, p in self.fleet.processes.items() if n.startswith("agent-")]

    def _loaded_times(self) -> dict[tuple[str, str], float]:
        """(node, namespace/model) -> epoch seconds of the agent's 'loaded model' log line."""
        times: dict[tuple[str, str], float] = {}
        assert self.fleet is not None
        for name, process in self.fleet.processes.items():
            if not name.startswith("agent-"):
                continue
            for line in process.log.read_text(errors="replace").splitlines():
                match = AGENT_LOG_TIME.match(line)
                if match:
                    stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    times.setdefault((name.removeprefix("agent-"), match.group(2)), stamp)
        return times

    # -- phases -------------------------------------------------------------------------------
    def init(self) -> dict[str, Any]:
        with phase(self.console, "1. init", 6 + self.agent_count) as step:
            step("control plane")
            self.state, started_here = system.connect(self.o.local, log=lambda line: None)
            step("namespace and CRDs", done=True)
            self._prepare_namespace()
            step("simulated nodes", done=True)
            self._register_nodes()
            step("operator", done=True)
            operator_s, agent_start = self._start_fleet(step)
            agents, status = self._wait_for_agents()
            base_rss = self._agent_rss()
        cluster = "external (KUBECONFIG)" if isinstance(self.state, system.ExternalCluster) else "local"
        return {
            "cluster": cluster,
            "cluster_started_here": started_here,
            "namespace": self.namespace,
            "tarsnode": self.tarsnode,
            "tarsnode_backend": status.get("backend", ""),
            "nodes": self.nodes,
            "operator_start_s": operator_s,
            "agents": self._agent_rows(agents, status, agent_start, base_rss),
        }

    def _prepare_namespace(self) -> None:
        if not self.o.existing_namespace:
            if self._kubectl("get", "namespace", self.namespace, check=False).returncode == 0:
                raise SystemExit(f"namespace {self.namespace} exists (a kept demo?); delete it or pass --namespace")
            self._kubectl("create", "namespace", self.namespace)
            self.created_namespace = True
        crds = str(REPO / "crds")
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", crds)
        self._kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", crds)

    def _register_nodes(self) -> None:
        assert self.state is not None
        self.nodes = self.o.nodes or [f"{self.plan.node_prefix}-{i + 1}" for i in range(self.agent_count)]
        for node in [] if self.o.nodes else self.nodes:
            if self._kubectl("get", "node", node, check=False).returncode != 0:
                self.created_nodes.append(node)
            localcluster.add_node(self.state, node, kvm=True)
            # Every simulated node's agent runs on this machine: the node offers what the machine has.
            system.set_node_resources(self.state, node, system.machine_resources())
        self._kubectl("wait", "--for=condition=Ready", "--timeout=60s", *[f"node/{n}" for n in self.nodes])

    def _start_fleet(self, step: Any) -> tuple[float, dict[str, float]]:
        """The operator, the TarsNode, one agent per node, the gateway: (operator start s, agent start s)."""
        assert self.state is not None
        self.fleet = Fleet(self.state, self.namespace, self.workdir)
        started = time.perf_counter()
        self.fleet.start_operator(priority=self.plan.operator_priority)
        operator_s = time.perf_counter() - started
        system.apply_docs(self.state, self.namespace, [self.tarsnode_doc])
        agent_start: dict[str, float] = {}
        for node in self.nodes:
            step(f"agent on {node}", done=True)
            started = time.perf_counter()
            self.fleet.start_agent(node, self.tarsnode)
            agent_start[node] = time.perf_counter() - started
        step("gateway", done=True)
        self.fleet.start_gateway()
        return operator_s, agent_start

    def _wait_for_agents(self) -> tuple[list[system.AgentInfo], dict[str, Any]]:
        """Every agent's Lease, and the TarsNode's status once it lists every agent."""
        state, count = self.state, len(self.nodes)
        assert state is not None
        leases = system.wait_for(
            lambda: (a := system.agents(state, self.namespace, self.tarsnode)) and len(a) == count and a,
            timeout=60,
        )
        status = system.wait_for(
            lambda: (
                (s := self._get("tarsnode", self.tarsnode).get("status") or {}).get("agents")
                and len(s["agents"]) == count
                and s
            ),
            timeout=60,
        )
        return leases or [], status or {}

    def _agent_rows(
        self,
        leases: list[system.AgentInfo],
        status: dict[str, Any],
        agent_start: dict[str, float],
        base_rss: dict[str, float],
    ) -> list[dict[str, Any]]:
        assert self.fleet is not None
        by_node = {a.node: a for a in leases}
        status_by_node = {a.get("node"): a for a in status.get("agents", [])}
        rows = []
        for node in self.nodes:
            log = self.fleet.processes[f"agent-{node}"].log.read_text(errors="replace")
            lease = by_node.get(node)
            rows.append(
                {
                    "node": node,
                    "backend": lease.backend if lease else "",
                    "backend_reason": lease.backend_reason if lease else "",
                    "probe": next((ln.split("KVM probe: ", 1)[1] for ln in log.splitlines() if "KVM probe:" in ln), ""),
                    "tarsnode_status_backend": status_by_node.get(node, {}).get("backend", ""),
                    "ready": status_by_node.get(node, {}).get("ready", False),
                    "start_s": agent_start[node],
                    "base_rss_mib": base_rss[node],
                }
            )
        return rows

    def load(self) -> dict[str, Any]:
        c = self.console
        checkpoints = self.workdir / "models"
        docs = model_documents(self.plan, checkpoints)
        models = [d for d in docs if d["spec"]["kind"] != "function"]
        functions = [d for d in docs if d["spec"]["kind"] == "function"]
        used = {
            d["spec"]["source"].removeprefix(f"file://{checkpoints}/")
            for d in docs
            if str(d["spec"].get("source", "")).startswith(f"file://{checkpoints}/")
        }
        synth: dict[str, Any] = {}
        with phase(c, "2. load", len(used) + len(models) + 1) as step:
            for name in sorted(used):
                ck = self.plan.checkpoints.get(name)
                if ck is None:
                    raise SystemExit(f"model source needs checkpoint {name!r}; add it to the plan's checkpoints")
                step(f"synthetic checkpoint {name} ({ck.preset})")
                started = time.perf_counter()
                path = make_synthetic(checkpoints / name, ck.preset, ck.seed)
                size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
                synth[name] = {
                    "preset": ck.preset,
                    "seed": ck.seed,
                    "write_s": time.perf_counter() - started,
                    "size_mib": size,
                    "synthetic": True,
                }
                step(name, done=True)
            rows = []
            for doc in models:
                name = doc["metadata"]["name"]
                step(f"{name}: apply -> Ready")
                rows.append(self._load_one(doc))
                step(name, done=True)
            step(f"{len(functions)} functions")
            fn_rows = self._load_functions(functions)
        self.models = docs
        return {"synthetic_checkpoints": synth, "models": rows, "functions": fn_rows}

    def _load_one(self, doc: dict[str, Any]) -> dict[str, Any]:
        assert self.state is not None
        name = doc["metadata"]["name"]
        key = f"{self.namespace}/{name}"
        time.sleep(1.0)  # let the previous model's warm pool settle before sampling memory
        before = self._agent_rss()
        applied = time.time()
        system.apply_docs(self.state, self.namespace, [doc])
        deadline = time.monotonic() + self.plan.ready_timeout_s
        obj: dict[str, Any] = {}
        while True:
            obj = self._get("tarsmodel", name)
            if system.is_ready(obj):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not Ready within {self.plan.ready_timeout_s:.0f}s: {obj.get('status')}")
            time.sleep(0.2)
        ready_s = time.time() - applied
        time.sleep(1.0)  # the warm pool refills after load: include it, it is what the model costs
        after = self._agent_rss()
        holders = [p["node"] for p in (obj.get("status") or {}).get("placements", []) if p.get("replicas", 0) > 0]
        loaded = {
            node: (t - applied) * 1000 for (node, k), t in self._loaded_times().items() if k == key and t >= applied - 1
        }
        deltas = [after[n] - before[n] for n in holders if n in after]
        return {
            "model": name,
            "kind": doc["spec"]["kind"],
            "source": doc["spec"].get("source", "inline"),
            "replicas": len(holders),
            "placements": holders,
            "apply_to_ready_s": ready_s,
            "apply_to_loaded_ms": loaded,
            "rss_delta_mib": dict(zip(holders, deltas, strict=False)),
            "rss_per_replica_mib": sum(deltas) / len(deltas) if deltas else float("nan"),
            "declared_mib": doc["spec"].get("memoryMiB", 256),
        }

    def _load_functions(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self.state is not None
        if not docs:
            return []
        applied = time.time()
        system.apply_docs(self.state, self.namespace, docs)
        pending = {d["metadata"]["name"]: d for d in docs}
        ready_at: dict[str, float] = {}
        deadline = time.monotonic() + self.plan.ready_timeout_s
        while pending:
            for name in list(pending):
                if system.is_ready(self._get("tarsmodel", name)):
                    ready_at[name] = time.time()
                    pending.pop(name)
            if time.monotonic() > deadline:
                raise TimeoutError(f"functions not Ready within {self.plan.ready_timeout_s:.0f}s: {sorted(pending)}")
            time.sleep(0.2)
        times = self._loaded_times()
        rows = []
        for doc in docs:
            name = doc["metadata"]["name"]
            key = f"{self.namespace}/{name}"
            rows.append(
                {
                    "model": name,
                    "kind": "function",
                    "source": doc["spec"].get("source", "inline"),
                    "replicas": doc["spec"].get("replicas", 1),
                    "apply_to_ready_s": ready_at[name] - applied,
                    "apply_to_loaded_ms": {n: (t - applied) * 1000 for (n, k), t in times.items() if k == key},
                    "rss_per_replica_mib": None,  # applied together: not attributable one by one
                    "declared_mib": doc["spec"].get("memoryMiB", 256),
                    "capabilities": doc["spec"].get("capabilities", []),
                }
            )
        return rows

    def benchmark(self) -> list[dict[str, Any]]:
        cases = self.plan.benchmark
        results = []
        with phase(self.console, "3. benchmark", len(cases)) as step:
            for case in cases:
                step(f"{case.model}: one at a time, {case.concurrency} concurrent, then saturation")
                results.append(self._benchmark_one(case))
                step(case.model, done=True)
        return results

    def _benchmark_one(self, case: BenchmarkCase) -> dict[str, Any]:
        obj = self._get("tarsmodel", case.model)
        url = system.model_url(self.gateway, case.model, case.route)
        _, single = measure.run(url, case.body, case.single_user_requests, 1, warmup=case.warmup)
        result, summary = measure.run(url, case.body, case.requests, case.concurrency)
        found = claims.claim(case.claim)
        return {
            "model": case.model,
            "kind": obj["spec"]["kind"],
            "route": case.route,
            "concurrency": case.concurrency,
            "replicas": (obj.get("status") or {}).get("readyReplicas", 0),
            "requests_planned": case.requests,
            "requests_sent": result.sent,
            "statuses": _count(result.statuses),
            "single_user": single.to_json(),
            "summary": summary.to_json(),
            "latencies_ms": result.latencies_ms,
            "sample_errors": result.sample_errors,
            "saturation": measure.saturate(url, case.body, case.concurrency, self.plan.saturation),
            "claim": found.to_json() if found else None,
        }

    def _sandbox_starts(self) -> dict[str, Any]:
        """Per model: sandbox start count, mean and histogram buckets summed over agents."""
        assert self.state is not None
        out: dict[str, Any] = {}
        for agent in system.agents(self.state, self.namespace, self.tarsnode):
            for (name, labels), value in system.scrape(agent.address).items():
                if not name.startswith("tars_agent_sandbox_start_seconds"):
                    continue
                lbl = dict(labels)
                model = lbl.get("model", "").split("/", 1)[-1]
                entry = out.setdefault(model, {"count": 0.0, "sum_s": 0.0, "buckets": {}})
                if name.endswith("_count"):
                    entry["count"] += value
                elif name.endswith("_sum"):
                    entry["sum_s"] += value
                elif name.endswith("_bucket"):
                    entry["buckets"][lbl["le"]] = entry["buckets"].get(lbl["le"], 0.0) + value
        for entry in out.values():
            entry["mean_ms"] = entry["sum_s"] / entry["count"] * 1000 if entry["count"] else float("nan")
        return out

    def security(self, granted: list[str] | None = None) -> dict[str, Any] | None:
        assert self.state is not None
        if not self.plan.security.enabled:
            return None
        target = security.Target(self.state, self.namespace, self.tarsnode, self.gateway, self._agent_logs())
        check = security.SecurityCheck(target, self.plan.security, granted, workdir=self.workdir)
        with phase(self.console, "4. security", len(check.steps()) + 1) as step:
            check.progress = lambda label: step(label, done=True)
            step("deploying the hostile function")
            check.deploy(self.plan.ready_timeout_s)
            try:
                result = check.run()
            finally:
                check.cleanup()
        return result.to_json()

    def baseline(self) -> list[dict[str, Any]]:
        """Each benchmarked model alone in its own agent process: the one-container-per-model baseline."""
        docs = {d["metadata"]["name"]: d for d in self.models}
        cases = [c for c in self.plan.benchmark if c.model in docs]
        rows = []
        with phase(self.console, "5. baseline", len(cases)) as step:
            for case in cases:
                step(f"{case.model} alone in its own agent")
                rows.append(
                    baseline.measure_one(docs[case.model], case, self.tarsnode_doc, self.workdir, self.plan.saturation)
                )
                step(case.model, done=True)
        return rows

    def _node_shape(self, agent_base_mib: float) -> recommend.NodeShape:
        assert self.state is not None
        found = system.kubectl_json(self.state, "nodes")["items"]
        ours = [n for n in found if n["metadata"]["name"] in self.nodes]
        model_memory = (self.tarsnode_doc.get("spec", {}).get("agent") or {}).get("modelMemoryMiB")
        return recommend.node_shape(ours, model_memory, agent_base_mib)

    def costs(self, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The cost table and the deployment recommendations, from what the other phases measured."""
        loads = {r["model"]: r for r in data["load"]["models"]}
        bases = {b["model"]: b for b in data["baseline"]}
        agent_base = [a["base_rss_mib"] for a in data["init"]["agents"]]
        vcpus = os.cpu_count() or 1
        inputs = cost.CostInputs(agent_base_rss_mib=sum(agent_base) / len(agent_base), machine_vcpus=vcpus)
        measured, rec_inputs = {}, []
        for r in data["benchmark"]:
            rss = loads.get(r["model"], {}).get("rss_per_replica_mib")
            if rss is None or math.isnan(rss):
                continue
            rps = r["saturation"]["rps"]
            if r["model"] in bases:
                b = bases[r["model"]]
                measured[r["model"]] = (rss, rps, cost.Baseline(b["rss_mib"], b["saturation"]["rps"]))
            rec_inputs.append(
                recommend.Measured(
                    r["model"], r["kind"], r["summary"]["p95_ms"], r["single_user"]["p95_ms"], rps, vcpus, rss
                )
            )
        with phase(self.console, "6. cost", 1) as step:
            step("pricing")
            table_data = cost.cost_table(measured, self.plan.cost, inputs)
            node = self._node_shape(inputs.agent_base_rss_mib)
            recs = {
                "nodes": node.describe(),
                "node_shape": asdict(node),
                "rows": recommend.recommendations(self.plan.scenarios, rec_inputs, node),
            }
            step("pricing", done=True)
        return table_data, recs

    def show(self, phase_name: str) -> None:
        """The tables of what a phase measured: the same sections report.md and report.html hold."""
        show_sections(self.console, tables.for_phase(phase_name, self.run.data))

    def write_report(self) -> Path:
        c = self.console
        with phase(c, "7. report", 1) as step:
            step("writing")
            self.run.data["meta"].update(
                finished_at=datetime.now().isoformat(timespec="seconds"),
                plan=self.plan.model_dump(mode="json"),
                workdir=str(self.workdir),
            )
            path = report.write(self.o.report_dir, self.run.data)
            step("written", done=True)
        c.print(f"report: {path / 'report.md'}, {path / 'report.json'}, {path / 'report.html'}")
        return path

    def cleanup(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.state is None:
            return
        if self.created_namespace:
            self._kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
        for node in self.created_nodes:
            self._kubectl("delete", "node", node, "--wait=false", check=False)

    def execute(self) -> dict[str, Any]:
        """Measures once (each phase returns its data), shows each phase's tables, writes the report."""
        started = time.perf_counter()
        data = self.run.data
        # The tables shown after each phase say which machine measured them.
        data["meta"] = {"machine_vcpus": os.cpu_count()}
        try:
            data["init"] = self.init()
            self.show("init")
            data["load"] = self.load()
            self.show("load")
            data["benchmark"] = self.benchmark()
            data["sandbox_start"] = self._sandbox_starts()
            self.show("benchmark")
            data["security"] = self.security()
            self.show("security")
            data["baseline"] = self.baseline()
            self.show("baseline")
            data["cost"], data["recommendations"] = self.costs(data)
            self.show("cost")
            data["total_s"] = time.perf_counter() - started
            self.write_report()
        finally:
            if self.o.keep:
                self.console.print(
                    f"--keep: namespace {self.namespace} and the processes stay up (gateway "
                    f"{self.gateway if self.fleet and 'gateway' in self.fleet.processes else '-'}); "
                    f"logs in {self.workdir}"
                )
            else:
                self.cleanup()
        return data


def show_sections(console: Console, sections: list[tables.Section]) -> None:
    for section in sections:
        table = Table(title=section.title)
        for column in section.header:
            table.add_column(column)
        for row in section.rows:
            table.add_row(*(_console_cell(cell) for cell in row))
        console.print(table)
        for note in section.notes:
            console.print(f"  {note}")


def _console_cell(value: Any) -> str:
    text = tables.fmt(value)
    return {"NO": "[red]NO", "yes": "[green]yes"}.get(text, text)


def print_security(console: Console, result: security.SecurityReport) -> None:
    section = tables.security({"security": result.to_json()})
    show_sections(console, [section] if section else [])


def _count(values: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def unique_namespace(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
