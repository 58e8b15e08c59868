"""``tars-agent``: the node-agent's command line.

``tars-agent --standalone --model FILE...`` serves TarsModel YAML files from disk (nodeRef ignored).
``tars-agent`` (cluster mode) needs NODE_NAME and POD_IP (and optionally POD_NAMESPACE, POD_NAME,
TARSNODE: the TarsNode name, put on the Lease as a label) and in-cluster config or KUBECONFIG.
Sandbox limits and warm-pool size come from ``--node-config`` (a TarsNode YAML, e.g. mounted from
the operator's ConfigMap) or the defaults. On SIGTERM the agent turns unready, finishes in-flight
work, releases its Lease and exits.

Access control (``tars_common.auth``): ``--auth auto`` (the default) is off in standalone mode and on in
cluster mode; then models with ``spec.access`` admit only what it lists, and models without it follow
``--default-access`` (``open``, or ``namespace``: ServiceAccounts of the model's namespace).
``--tls-cert``/``--tls-key`` serve HTTPS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic import ValidationError

from tars_agent.agent import Agent, AgentConfig, default_workers
from tars_agent.sandbox.probe import BACKENDS, BackendUnavailable, create_backend, probe_kvm, select_backend
from tars_agent.server import ADMISSION, CONNECTIONS, create_app
from tars_agent.tenancy import FairAdmission
from tars_api.access import DEFAULT_ACCESS, DefaultAccess
from tars_api.meta import parse_duration
from tars_api.tarsmodel import TarsModel
from tars_api.tarsnode import SandboxLimits, TarsNode
from tars_common import oip_grpc, tls
from tars_common.auth import AccessGuard, AuthConfig
from tars_common.kube import load_client_config

log = logging.getLogger("tars_agent")


def load_documents(paths: Sequence[Path], kind: str) -> list[dict[str, Any]]:
    docs = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == kind:
                docs.append(doc)
    return docs


def load_model_files(paths: Sequence[Path]) -> list[TarsModel]:
    """Every TarsModel in the files; a bad one stops start-up with the file and field named."""
    models = []
    for path in paths:
        for doc in load_documents([path], "TarsModel"):
            try:
                models.append(TarsModel.model_validate(doc))
            except ValidationError as exc:
                raise SystemExit(f"{path}: invalid TarsModel: {exc}") from None
    if paths and not models:
        raise SystemExit(f"no TarsModel found in {', '.join(map(str, paths))}")
    return models


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags; with --config, the file the operator renders from the TarsNode (its ConfigMap) gives
    the defaults and explicit flags still win."""
    p = build_parser()
    first, _ = p.parse_known_args(argv)
    if first.config is not None:
        p.set_defaults(**rendered_defaults(first.config))
    return p.parse_args(argv)


def rendered_defaults(path: Path) -> dict[str, Any]:
    try:
        rendered = yaml.safe_load(path.read_text()) or {}
        sandbox = SandboxLimits.model_validate(rendered.get("sandbox", {}))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise SystemExit(f"{path}: unusable agent configuration: {exc}") from None
    return {
        "tarsnode": rendered.get("tarsNode"),
        "backend": rendered.get("backend", "auto"),
        "port": int(rendered.get("port", 8080)),
        "grpc_port": int(rendered.get("grpcPort", 8081)),
        "native_http": bool(rendered.get("nativeHttp", False)),
        "warm_pool": rendered.get("warmPoolSize"),
        "capacity_mib": rendered.get("capacityMiB"),
        "sandbox": sandbox,
        "model_root": [Path(root) for root in rendered.get("modelRoots") or []],
        "log_level": rendered.get("logLevel", "info"),
        **_rendered_knowledge(rendered.get("knowledge") or {}),
        # Optional sections the operator may render: auth {mode, defaultAccess, metricsRequireToken},
        # tls {certFile, keyFile}.
        **_rendered_security(rendered),
    }


def _rendered_knowledge(knowledge: dict[str, Any]) -> dict[str, Any]:
    found = {
        "knowledge_backend": knowledge.get("backend"),
        "state_dir": knowledge.get("stateDir"),
        "knowledge_grace": knowledge.get("deletionGracePeriod"),
    }
    return {k: v for k, v in found.items() if v is not None}


def _rendered_security(rendered: dict[str, Any]) -> dict[str, Any]:
    auth, transport = rendered.get("auth") or {}, rendered.get("tls") or {}
    found = {
        "auth": auth.get("mode"),
        "default_access": auth.get("defaultAccess"),
        "metrics_auth": auth.get("metricsRequireToken"),
        "tls_cert": transport.get("certFile"),
        "tls_key": transport.get("keyFile"),
    }
    return {k: v for k, v in found.items() if v is not None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tars-agent", description="TARS node-agent: runs models in sandboxes.")
    p.add_argument("--config", type=Path, help="agent configuration rendered by the operator (cluster mode)")
    p.add_argument("--tarsnode", default=os.environ.get("TARSNODE"), help="the TarsNode this agent serves")
    p.set_defaults(capacity_mib=None, sandbox=None)
    p.add_argument("--standalone", action="store_true", help="serve --model files, no Kubernetes")
    p.add_argument("--model", type=Path, action="append", default=[], help="TarsModel YAML file (repeatable)")
    p.add_argument("--node-config", type=Path, help="TarsNode YAML whose sandbox limits and warm pool apply")
    p.add_argument("--backend", choices=BACKENDS, default=os.environ.get("TARS_BACKEND", "auto"))
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=int(os.environ.get("TARS_PORT", "8080")))
    p.add_argument(
        "--grpc-port",
        type=int,
        default=int(os.environ.get("TARS_GRPC_PORT", "8081")),
        help="Open Inference Protocol gRPC port (0: off)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("TARS_WORKERS", "0")) or default_workers(),
        help="guest calls run at once (default: 4 per CPU, so batched nn.embed calls can share a pass)",
    )
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait before 429")
    p.add_argument("--warm-pool", type=int, default=None, help="warm sandboxes per model")
    p.add_argument(
        "--model-root",
        type=Path,
        action="append",
        default=[],
        help="directory file:// sources may load from (repeatable; none by default refuses every file://)",
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other agent processes (one per core; the kernel spreads connections)",
    )
    p.add_argument(
        "--native-http",
        action="store_true",
        default=os.environ.get("TARS_NATIVE_HTTP", "") == "1",
        help="serve the infer route of native-path models from Rust (tars_native), Python deciding access",
    )
    p.add_argument("--log-level", default=os.environ.get("TARS_LOG_LEVEL", "info"))
    knowledge = p.add_argument_group("knowledge store (the DSN only from TARS_KNOWLEDGE_DSN: never in argv)")
    knowledge.add_argument(
        "--knowledge-backend",
        choices=("sqlite", "postgres"),
        default=os.environ.get("TARS_KNOWLEDGE_BACKEND", "sqlite"),
        help="sqlite: a file in --state-dir (one node); postgres: TARS_KNOWLEDGE_DSN (a fleet)",
    )
    knowledge.add_argument(
        "--state-dir",
        type=Path,
        default=os.environ.get("TARS_STATE_DIR"),
        help="the agent's durable state (the sqlite knowledge store); none keeps documents in memory",
    )
    knowledge.add_argument(
        "--knowledge-grace",
        default=os.environ.get("TARS_KNOWLEDGE_GRACE", "24h"),
        help="how long a deleted TarsModel's documents are kept (unless spec.knowledge.retain)",
    )
    p.add_argument(
        "--model-concurrency",
        type=int,
        default=None,
        help="workers one model may hold at once (default: all when alone, all but one when shared)",
    )
    p.add_argument("--model-queue", type=int, default=None, help="requests one model may queue before 429")
    security = p.add_argument_group("access control and TLS")
    security.add_argument(
        "--auth",
        choices=("auto", "on", "off"),
        default=os.environ.get("TARS_AUTH", "auto"),
        help="check callers: auto = off standalone, on in cluster mode",
    )
    security.add_argument(
        "--default-access",
        choices=[d.value for d in DefaultAccess],
        default=os.environ.get("TARS_DEFAULT_ACCESS", DEFAULT_ACCESS.value),
        help="who may call a model without spec.access when auth is on",
    )
    security.add_argument(
        "--metrics-auth",
        action="store_true",
        default=os.environ.get("TARS_METRICS_AUTH", "") == "true",
        help="/metrics needs a valid ServiceAccount token",
    )
    security.add_argument(
        "--token-audience", action="append", default=[], help="audience tokens must carry (repeatable)"
    )
    security.add_argument("--auth-cache-ttl", type=float, default=30.0, help="seconds a TokenReview is cached")
    security.add_argument("--kubeconfig", default=None, help="kubeconfig for TokenReview/Secrets (else in-cluster)")
    security.add_argument("--tls-cert", type=Path, default=os.environ.get("TARS_TLS_CERT"), help="serve HTTPS")
    security.add_argument("--tls-key", type=Path, default=os.environ.get("TARS_TLS_KEY"), help="key of --tls-cert")
    return p


def auth_config(args: argparse.Namespace) -> AuthConfig:
    enabled = args.auth == "on" or (args.auth == "auto" and not args.standalone)
    return AuthConfig(
        enabled=enabled,
        default_access=DefaultAccess(args.default_access),
        metrics_require_token=bool(args.metrics_auth),
        token_cache_ttl_s=args.auth_cache_ttl,
        audiences=tuple(args.token_audience),
    )


def access_guard(args: argparse.Namespace, agent: Agent) -> AccessGuard | None:
    config = auth_config(args)
    if not config.enabled:
        return None
    return AccessGuard.from_api(config, load_client_config(args.kubeconfig), agent.metrics.registry)


def ssl_context(args: argparse.Namespace) -> Any:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        return None
    try:
        return tls.server_context(args.tls_cert, args.tls_key)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot serve TLS from {args.tls_cert} / {args.tls_key}: {exc}") from None


def agent_config(args: argparse.Namespace, node: TarsNode | None) -> AgentConfig:
    config = AgentConfig(host=args.host, port=args.port, workers=args.workers, max_queue=args.max_queue)
    if node is not None:
        config.node_limits = node.spec.sandbox
        config.warm_pool_size = node.spec.warm_pool_size
        config.capacity_mib = node.spec.agent.model_memory_mi_b
        config.model_roots = tuple(Path(root) for root in node.spec.model_roots)
    if args.model_root:
        config.model_roots = tuple(args.model_root)
    if args.sandbox is not None:
        config.node_limits = args.sandbox
    if args.capacity_mib is not None:
        config.capacity_mib = int(args.capacity_mib)
    if args.warm_pool is not None:
        config.warm_pool_size = args.warm_pool
    config.knowledge_backend = args.knowledge_backend
    config.state_dir = Path(args.state_dir) if args.state_dir else None
    config.knowledge_dsn = os.environ.get("TARS_KNOWLEDGE_DSN") or None
    config.knowledge_grace_s = parse_duration(str(args.knowledge_grace))
    return config


async def start_http(
    agent: Agent,
    guard: AccessGuard | None,
    admission: FairAdmission | None,
    ssl_context: Any,
    reuse_port: bool,
    native_http: bool,
    tls_files: tuple[Path, Path] | None = None,
) -> tuple[web.AppRunner, asyncio.Server, Any]:
    """The aiohttp app listening, and with ``native_http`` the native front (tars_agent.native_front)
    on the agent's port, aiohttp then on a loopback port of its own behind it, in plain HTTP (the
    front speaks TLS from ``tls_files``, the certificate and key behind ``ssl_context``)."""
    app = create_app(agent, guard, admission)
    front = None
    if native_http:
        from tars_agent.native_front import NativeHttp, client_address

        front = NativeHttp(agent, guard, app[ADMISSION])
        app.middlewares.insert(0, client_address)
        app.middlewares.append(front.middleware())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # Behind the connection guard (tars_common.http_limits): slow clients and too many connections cut off.
    host, port = ("127.0.0.1", 0) if front is not None else (agent.config.host, agent.config.port)
    behind = ssl_context if front is None else None
    listener = await app[CONNECTIONS].serve(runner, host, port, behind, reuse_port and front is None)
    if front is not None:
        upstream = listener.sockets[0].getsockname()[1]
        agent.config.port = front.start(upstream, reuse_port, tls_files if ssl_context is not None else None)
        log.info("native HTTP front on %s:%d, Python on 127.0.0.1:%d", agent.config.host, agent.config.port, upstream)
    return runner, listener, front


async def serve(
    agent: Agent,
    models: list[TarsModel],
    cluster: bool,
    tarsnode: str | None = None,
    reuse_port: bool = False,
    guard: AccessGuard | None = None,
    ssl_context: Any = None,
    admission: FairAdmission | None = None,
    grpc_port: int | None = None,
    grpc_tls: tuple[bytes, bytes] | None = None,
    native_http: bool = False,
    tls_files: tuple[Path, Path] | None = None,
) -> None:
    runner, listener, front = await start_http(agent, guard, admission, ssl_context, reuse_port, native_http, tls_files)
    log.info(
        "serving on %s:%d with backend %s (%s)",
        agent.config.host,
        agent.config.port,
        agent.backend.name,
        agent.backend_reason,
    )
    grpc_server, bridge = None, None
    if grpc_port is not None:
        grpc_server, bridge = await start_grpc(agent, grpc_port, ssl_context is not None, grpc_tls, reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks: list[asyncio.Task[None]] = []
    cluster_agent = None
    if cluster:
        from tars_agent.cluster import ClusterAgent

        node = os.environ["NODE_NAME"]
        address = f"{os.environ.get('POD_IP', '127.0.0.1')}:{agent.config.port}"
        cluster_agent = ClusterAgent(agent, node, address, tarsnode)
        tasks += [asyncio.create_task(cluster_agent.renew_forever()), asyncio.create_task(cluster_agent.sync_forever())]
    else:
        await asyncio.gather(*(agent.ensure_loaded(m) for m in models))

    await stop.wait()
    log.info("draining: unready, finishing in-flight work")
    if front is not None:
        front.forget()  # the drain's 503s come from Python
    drain = asyncio.create_task(agent.drain())
    if cluster_agent is not None:
        with contextlib.suppress(Exception):
            await cluster_agent.renew_once()  # announce ready=false at once
    finished = await drain
    if not finished:
        log.warning("drain timed out; exiting with work in flight")
    for task in tasks:
        task.cancel()
    if cluster_agent is not None:
        cluster_agent.stop()
        try:
            await cluster_agent.release()
        except Exception:
            log.exception("releasing the Lease failed; it will expire")
    if grpc_server is not None and bridge is not None:
        await grpc_server.stop(grace=1.0)
        await bridge.close()
    if front is not None:
        front.close()
    listener.close()
    await runner.cleanup()
    agent.close()


async def start_grpc(
    agent: Agent, port: int, https: bool, tls: tuple[bytes, bytes] | None, reuse_port: bool = False
) -> tuple[Any, oip_grpc.RestBridge | None]:
    """The gRPC service, a front door onto this process's REST listener (tars_common.oip_grpc).
    A port that cannot be bound leaves the agent serving REST, and says so."""
    host = agent.config.host if agent.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    # Loopback to this very process: its certificate names the Service, not 127.0.0.1.
    bridge = oip_grpc.RestBridge(f"{'https' if https else 'http'}://{host}:{agent.config.port}", ssl_context=not https)
    try:
        limit = agent.config.max_body_bytes
        server, bound = await oip_grpc.start(bridge, agent.config.host, port, limit, tls, reuse_port)
    except RuntimeError as exc:
        log.error("gRPC not served: port %d cannot be bound (%s); REST goes on", port, exc)
        return None, None
    log.info("gRPC (Open Inference Protocol) on %s:%d%s", agent.config.host, bound, " with TLS" if tls else "")
    return server, bridge


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.standalone and not os.environ.get("NODE_NAME"):
        raise SystemExit("cluster mode needs NODE_NAME (or pass --standalone --model FILE)")
    node = None
    if args.node_config is not None:
        docs = load_documents([args.node_config], "TarsNode")
        if not docs:
            raise SystemExit(f"{args.node_config}: no TarsNode found")
        node = TarsNode.model_validate(docs[0])
    models = load_model_files(args.model) if args.standalone else []

    probe = probe_kvm(run_sandbox=args.backend != "wasmtime")
    try:
        backend_name, reason = select_backend(args.backend, probe)
    except BackendUnavailable as exc:
        print(f"tars-agent: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("KVM probe: %s %s -> backend %s", probe.reason, probe.checks, backend_name)
    context = ssl_context(args)
    agent = Agent(agent_config(args, node), create_backend(backend_name), reason)
    if args.native_http and agent.backend.path != "native":
        # The front runs guests through tars_native; other backends (Hyperlight) keep the Python path.
        log.warning("--native-http ignored: backend %s (%s path) is not tars_native", backend_name, agent.backend.path)
        args.native_http = False
    guard = access_guard(args, agent)
    log.info(
        "access control %s (models without spec.access: %s); TLS %s",
        "on" if guard is not None else "off",
        args.default_access,
        "on" if context is not None else "off",
    )
    admission = FairAdmission(
        agent.config.workers,
        args.model_queue if args.model_queue is not None else agent.config.max_queue,
        args.model_concurrency,
        models_loaded=lambda: len(agent.repository.models),
        batched=agent.waits_in_batches,
    )
    grpc_port = args.grpc_port if args.grpc_port > 0 else None
    grpc_tls = (args.tls_key.read_bytes(), args.tls_cert.read_bytes()) if context is not None else None
    asyncio.run(
        serve(
            agent,
            models,
            not args.standalone,
            args.tarsnode,
            args.reuse_port,
            guard,
            context,
            admission,
            grpc_port,
            grpc_tls,
            args.native_http,
            (args.tls_cert, args.tls_key) if context is not None else None,
        )
    )
    stuck = agent.executor.guests_running()
    if stuck:
        # A thread cannot be killed and the interpreter would wait for it at exit: shutdown stays bounded.
        log.error("%d guest calls still running after the drain; exiting without them", stuck)
        logging.shutdown()
        os._exit(1)


if __name__ == "__main__":
    main()
