"""The model runtimes offered to guests as host capabilities, and the catalog entries that use them.

:meth:`ModelServices.install` (called by ``tars_agent.assembly.default_catalog``; each agent owns one
ModelServices) adds builtin models and agent-wide capabilities:

=============================== =========== ================================================
source                          kind        guest / runtime
=============================== =========== ================================================
builtin://sentiment-vader       sentiment   VADER wholly in a compiled (Rust) guest; Hyperlight runs the
                                            Python app from source
builtin://all-minilm-l6-v2      embedding   a compiled (Rust) guest validates, host MiniLM embeds
                                            (nn.embed); Hyperlight runs the Python app
builtin://tars-reasoning        reasoning   situation -> decision -> action -> outcome trace
builtin://autonomous-reasoning  function    weighs options against a problem
builtin://self-healing          function    diagnosis + remediation, asks the operator
builtin://knowledge-query       function    answers from the tenant's store with citations
builtin://agent-coordination    function    decomposes a task, calls the other functions
file:///dir                     text-gen.   GPT-2-format checkpoint in ``dir`` (nn.generate)
=============================== =========== ================================================

Capabilities (all keyed by the calling model, ``ctx.model``): nn.embed, nn.generate, nn.sentiment,
knowledge.query, knowledge.upsert, functions.invoke, operator.request. Heavy runtimes load lazily,
once per agent, and are shared read-only by every sandbox.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tars_agent.capabilities import CallContext, CapabilityError, CapabilityRegistry, CapabilityUnavailable, ModelKey
from tars_agent.catalog import Catalog, ModelBundle, SourceRequest
from tars_agent.runtimes.batching import Coalescer
from tars_agent.runtimes.gpt2 import DEFAULT_TOKEN_LIMIT, MAX_STOP_SEQUENCES, GenerationRequest, GPT2Model
from tars_agent.runtimes.knowledge import Document, KnowledgeBase, KnowledgeError, StoreUnavailable, validate_document
from tars_agent.runtimes.knowledge_store import DocumentStore
from tars_agent.runtimes.minilm import MiniLMEmbedder
from tars_agent.sandbox.base import GuestFailure, GuestSource

if TYPE_CHECKING:
    from tars_agent.repository import ModelRepository

log = logging.getLogger(__name__)

MAX_EMBED_TEXTS = 64
MAX_TEXT_CHARS = 10000
MAX_PROMPT_CHARS = 8000
MAX_INVOKE_DEPTH = 3
EMBED_LAYOUTS = ("batch", "single", "oip")
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
OPERATOR_ACTIONS = ("scale", "quarantine", "replace-placements")
KNOWLEDGE_DIR_ENV = "TARS_KNOWLEDGE_DIR"

# builtin name -> (guest app, OIP inputs, OIP outputs)
_TEXT_IN = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
_JSON_OUT = [{"name": "output", "datatype": "BYTES", "shape": [1]}]
BUILTIN_GUESTS: dict[str, tuple[str, list[dict[str, Any]], list[dict[str, Any]]]] = {
    "sentiment-vader": (
        "sentiment",
        _TEXT_IN,
        [{"name": n, "datatype": "FP32", "shape": [-1]} for n in ("neg", "neu", "pos", "compound")],
    ),
    "all-minilm-l6-v2": ("embedding", _TEXT_IN, [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]),
    "tars-reasoning": ("tars_reasoning", [{"name": "situation", "datatype": "BYTES", "shape": [1]}], _JSON_OUT),
    "autonomous-reasoning": (
        "autonomous_reasoning",
        [{"name": "problem", "datatype": "BYTES", "shape": [1]}],
        _JSON_OUT,
    ),
    "self-healing": ("self_healing", [{"name": "issue", "datatype": "BYTES", "shape": [1]}], _JSON_OUT),
    "knowledge-query": ("knowledge_query", [{"name": "question", "datatype": "BYTES", "shape": [1]}], _JSON_OUT),
    "agent-coordination": ("agent_coordination", [{"name": "task", "datatype": "BYTES", "shape": [1]}], _JSON_OUT),
}

# builtin name -> compiled guest (tars_guests.compiled) that serves it on Wasmtime. A fresh instance
# starts in microseconds and a call costs what the work costs: the componentize-py guest's own CPython
# took about 1 ms to start and 1-2 ms per call (for an embedding, 5 ms of CPU beside MiniLM's 6-7).
# Their outputs equal the Python apps' (tested).
COMPILED_BUILTINS = {"sentiment-vader": "vader", "all-minilm-l6-v2": "embedding"}

GuestRunner = Callable[[str], str]  # input JSON -> output JSON, in a fresh sandbox


def _texts(args: dict[str, Any], field: str = "texts") -> list[str]:
    texts = args.get(field)
    if not isinstance(texts, list) or not texts:
        raise CapabilityError(f"{field}: must be a non-empty list of strings")
    if len(texts) > MAX_EMBED_TEXTS:
        raise CapabilityError(f"{field}: has {len(texts)} items; the limit is {MAX_EMBED_TEXTS}")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
            raise CapabilityError(f"{field}[{i}]: must be a string of at most {MAX_TEXT_CHARS} characters")
    return texts


def _int_arg(args: dict[str, Any], field: str, default: int, low: int, high: int) -> int:
    value = args.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CapabilityError(f"{field}: must be an integer between {low} and {high}")
    return value


def generation_request(args: dict[str, Any]) -> GenerationRequest:
    """Validated nn.generate arguments (the guest validates too; the host never trusts it)."""
    prompt = args.get("prompt")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
        raise CapabilityError(f"prompt: must be a string of at most {MAX_PROMPT_CHARS} characters")
    temperature = args.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 5:
        raise CapabilityError("temperature: must be a number between 0 and 5")
    stop = args.get("stop", [])
    if not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
        raise CapabilityError(f"stop: must be a list of at most {MAX_STOP_SEQUENCES} non-empty strings")
    seed = args.get("seed")
    if seed is not None:
        seed = _int_arg(args, "seed", 0, 0, 2**32 - 1)
    return GenerationRequest(
        prompt=prompt,
        max_tokens=_int_arg(args, "max_tokens", 32, 1, 4096),
        temperature=float(temperature),
        top_k=_int_arg(args, "top_k", 0, 0, 1_000_000),
        seed=seed,
        stop=tuple(stop),
    )


_EMBEDDERS: dict[Path | None, MiniLMEmbedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def shared_embedder(model_dir: Path | None = None) -> MiniLMEmbedder:
    """One MiniLM per process and directory: its weights are read-only, so agents share them."""
    with _EMBEDDERS_LOCK:
        if model_dir not in _EMBEDDERS:
            started = time.perf_counter()
            _EMBEDDERS[model_dir] = MiniLMEmbedder(model_dir)
            log.info("loaded all-MiniLM-L6-v2 in %.0f ms", (time.perf_counter() - started) * 1000)
        return _EMBEDDERS[model_dir]


@dataclass
class _Generator:
    model: GPT2Model
    token_limit: int
    loaded_at: float


class ModelServices:
    """Shared runtimes (lazily loaded) and the capability functions that use them."""

    def __init__(
        self,
        minilm_dir: Path | None = None,
        knowledge_dir: Path | None = None,
        knowledge_store: DocumentStore | None = None,
    ) -> None:
        self._minilm_dir = minilm_dir
        # Where tenants' documents are kept (knowledge_store.open_store); None: in memory only.
        self.knowledge_store = knowledge_store
        env_dir = os.environ.get(KNOWLEDGE_DIR_ENV)
        self.knowledge_dir = knowledge_dir or (Path(env_dir) if env_dir else None)
        self._lock = threading.Lock()
        self._embedder: MiniLMEmbedder | None = None
        self._coalescer: Coalescer | None = None
        self._knowledge: KnowledgeBase | None = None
        self._knowledge_loaded: set[str] = set()
        self._retain: dict[ModelKey, bool] = {}
        self._vader: Any = None
        self._generators: dict[ModelKey, _Generator] = {}
        self._resolve_function: Callable[[ModelKey], GuestRunner | None] | None = None
        self._depth = threading.local()
        self._operator_ids = itertools.count(1)
        self.operator_requests: deque[dict[str, Any]] = deque(maxlen=1000)

    # --- shared runtimes -------------------------------------------------------------------
    @property
    def embedder(self) -> MiniLMEmbedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = shared_embedder(self._minilm_dir)
            return self._embedder

    def coalesced_embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeds ``texts``, sharing a forward pass with concurrent callers (see batching)."""
        with self._lock:
            if self._coalescer is None:
                self._coalescer = Coalescer(shared_embedder(self._minilm_dir).embed)
            coalescer = self._coalescer
        return coalescer(texts)

    @property
    def knowledge(self) -> KnowledgeBase:
        embedder = self.embedder
        with self._lock:
            if self._knowledge is None:
                self._knowledge = KnowledgeBase(self.coalesced_embed, embedder.dimensions, self.knowledge_store)
            return self._knowledge

    def _vader_analyzer(self) -> Any:
        with self._lock:
            if self._vader is None:
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

                self._vader = SentimentIntensityAnalyzer()
            return self._vader

    def tenant_store(self, model: ModelKey) -> tuple[KnowledgeBase, str]:
        """The knowledge base and the caller's tenant key, its documents directory loaded once."""
        tenant = str(model)
        knowledge = self.knowledge
        if self.knowledge_dir is not None:
            with self._lock:
                first = tenant not in self._knowledge_loaded
                self._knowledge_loaded.add(tenant)
            directory = self.knowledge_dir / model.namespace / model.name
            if first and directory.is_dir():
                count = knowledge.load_directory(tenant, directory, self.retains(model))
                log.info("loaded %d documents for %s from %s", count, tenant, directory)
        return knowledge, tenant

    def set_retain(self, model: ModelKey, retain: bool) -> None:
        """The loaded model's spec.knowledge.retain. A tenant its upserts create takes it at once: the
        lifecycle pass learns retain only when it sees the model and its tenant together, and a model
        written to and deleted between two passes would otherwise lose its documents."""
        with self._lock:
            self._retain[model] = retain

    def retains(self, model: ModelKey) -> bool:
        with self._lock:
            return self._retain.get(model, False)

    def load_tenant(self, model: ModelKey) -> int:
        """Reads a model's documents from the store into this agent's cache (before it is reported
        ready); raises StoreUnavailable when the store cannot be read."""
        knowledge, tenant = self.tenant_store(model)
        return knowledge.load(tenant)

    def reconcile_knowledge(self, namespace: str, present: dict[str, bool], grace_s: float) -> list[str]:
        """Drops the documents of the namespace's deleted models once ``grace_s`` has passed (unless
        they asked to be retained); ``present``: the TarsModels there now -> spec.knowledge.retain."""
        with self._lock:
            knowledge = self._knowledge
        now = time.time()
        if knowledge is not None:
            return knowledge.reconcile_namespace(namespace, present, grace_s, now)
        if self.knowledge_store is None:
            return []
        return self.knowledge_store.reconcile_namespace(namespace, present, grace_s, now)

    def close(self) -> None:
        with self._lock:
            knowledge, self._knowledge = self._knowledge, None
        if knowledge is not None:
            knowledge.close()
        elif self.knowledge_store is not None:
            self.knowledge_store.close()

    # --- wiring the agent provides ---------------------------------------------------------
    def attach_function_resolver(self, resolve: Callable[[ModelKey], GuestRunner | None]) -> None:
        """Lets functions.invoke reach other loaded models (the repository knows them)."""
        self._resolve_function = resolve

    def attach_repository(self, repository: ModelRepository) -> None:
        def resolve(key: ModelKey) -> GuestRunner | None:
            loaded = repository.models.get(key)
            return loaded.pool.run if loaded is not None else None

        self.attach_function_resolver(resolve)

    def register_generator(self, key: ModelKey, model: GPT2Model, token_limit: int) -> None:
        with self._lock:
            self._generators[key] = _Generator(model, token_limit, time.monotonic())

    def unregister_generator(self, key: ModelKey) -> None:
        with self._lock:
            self._generators.pop(key, None)

    # --- capabilities ------------------------------------------------------------------------
    def nn_embed(self, _ctx: CallContext, args: dict[str, Any]) -> Any:
        """{"texts": [...], "layout"?} -> embeddings in the layout the caller will answer with:
        "batch" (default) {"embeddings", "dimensions", "model"}, "single" {"embedding", ...} or
        "oip" {"outputs": [FP32 tensor "embedding" [n, dims]]}, so guests need not re-encode floats."""
        layout = args.get("layout", "batch")
        if layout not in EMBED_LAYOUTS:
            raise CapabilityError(f"layout: must be one of {', '.join(EMBED_LAYOUTS)}")
        texts = _texts(args)
        if layout == "single" and len(texts) != 1:
            raise CapabilityError("layout: single needs exactly one text")
        vectors = self.coalesced_embed(texts)
        rows = np.round(vectors.astype(np.float64), 7)
        dims = int(vectors.shape[1])
        if layout == "oip":
            tensor = {
                "name": "embedding",
                "datatype": "FP32",
                "shape": [len(texts), dims],
                "data": rows.ravel().tolist(),
            }
            return {"outputs": [tensor]}
        if layout == "single":
            return {"embedding": rows[0].tolist(), "dimensions": dims, "model": EMBEDDING_MODEL}
        return {"embeddings": rows.tolist(), "dimensions": dims, "model": EMBEDDING_MODEL}

    def nn_sentiment(self, _ctx: CallContext, args: dict[str, Any]) -> Any:
        text = args.get("text")
        if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
            raise CapabilityError(f"text: must be a string of at most {MAX_TEXT_CHARS} characters")
        return dict(self._vader_analyzer().polarity_scores(text))

    def nn_generate(self, ctx: CallContext, args: dict[str, Any]) -> Any:
        """Generation with a text-generation model loaded on this agent: ``args.model`` (a TarsModel
        name in the caller's namespace), else the most recently loaded one in that namespace."""
        request = generation_request(args)
        wanted = args.get("model")
        with self._lock:
            candidates = {k: g for k, g in self._generators.items() if k.namespace == ctx.model.namespace}
        if wanted is not None:
            generator = candidates.get(ModelKey(ctx.model.namespace, str(wanted)))
            if generator is None:
                raise CapabilityError(f"model: no text-generation model {wanted!r} is loaded in {ctx.model.namespace}")
        elif candidates:
            generator = max(candidates.values(), key=lambda g: g.loaded_at)
        else:
            raise CapabilityError(f"no text-generation model is loaded in namespace {ctx.model.namespace}")
        return generator.model.generate(request, generator.token_limit).to_json()

    def knowledge_query(self, ctx: CallContext, args: dict[str, Any]) -> Any:
        knowledge, tenant = self.tenant_store(ctx.model)
        try:
            hits = knowledge.query(tenant, args.get("query"), args.get("top_k", 3))  # type: ignore[arg-type]
        except KnowledgeError as exc:
            raise CapabilityError(str(exc)) from None
        answer: dict[str, Any] = {"hits": [hit.to_json() for hit in hits], "store_size": knowledge.size(tenant)}
        if knowledge.stale(tenant):
            answer["stale"] = True  # the store is unreachable: this agent's last copy answered
        return answer

    def knowledge_upsert(self, ctx: CallContext, args: dict[str, Any]) -> Any:
        raw = args.get("documents")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_EMBED_TEXTS:
            raise CapabilityError(f"documents: must be a list of 1 to {MAX_EMBED_TEXTS} documents")
        knowledge, tenant = self.tenant_store(ctx.model)
        try:
            documents: list[Document] = [validate_document(item, i) for i, item in enumerate(raw)]
            count = knowledge.upsert(tenant, documents, self.retains(ctx.model))
        except KnowledgeError as exc:
            raise CapabilityError(str(exc)) from None
        except StoreUnavailable as exc:
            log.warning("knowledge.upsert for %s refused: %s", tenant, exc)
            raise CapabilityUnavailable("knowledge store unreachable: nothing was written; retry later") from None
        return {"upserted": count, "store_size": knowledge.size(tenant)}

    def functions_invoke(self, ctx: CallContext, args: dict[str, Any]) -> Any:
        """Runs another model's guest (same namespace) in a fresh sandbox; nesting is bounded."""
        name = args.get("function")
        if not isinstance(name, str) or not name:
            raise CapabilityError("function: must be the name of a TarsModel in the caller's namespace")
        payload = args.get("input", {})
        if self._resolve_function is None:
            raise CapabilityError("functions.invoke is not wired on this agent")
        runner = self._resolve_function(ModelKey(ctx.model.namespace, name))
        if runner is None:
            raise CapabilityError(f"function: {name!r} is not loaded on this agent")
        depth = getattr(self._depth, "value", 0)
        if depth >= MAX_INVOKE_DEPTH:
            raise CapabilityError(f"functions.invoke nested deeper than {MAX_INVOKE_DEPTH} calls")
        self._depth.value = depth + 1
        try:
            return json.loads(runner(json.dumps(payload)))
        except GuestFailure as failure:
            raise CapabilityError(f"function {name} failed: {failure.public}") from None
        finally:
            self._depth.value = depth

    def operator_request(self, ctx: CallContext, args: dict[str, Any]) -> Any:
        """Records a request to the operator (scale, quarantine, replace-placements).

        The agent publishes :attr:`operator_requests`; the operator decides. Only the caller's
        namespace can be named, so a guest cannot ask for changes to another tenant's models.
        """
        action = args.get("action")
        if action not in OPERATOR_ACTIONS:
            raise CapabilityError(f"action: must be one of {', '.join(OPERATOR_ACTIONS)}")
        request: dict[str, Any] = {"action": action, "namespace": ctx.model.namespace, "from": str(ctx.model)}
        if action in ("scale", "quarantine"):
            model = args.get("model")
            if not isinstance(model, str) or not model:
                raise CapabilityError("model: must name a TarsModel in the caller's namespace")
            request["model"] = model
        if action == "scale":
            request["replicas"] = _int_arg(args, "replicas", 1, 0, 1000)
        if action == "replace-placements":
            node = args.get("node")
            if not isinstance(node, str) or not node:
                raise CapabilityError("node: must name a node")
            request["node"] = node
        reason = args.get("reason", "")
        request["reason"] = str(reason)[:500]
        request["id"] = next(self._operator_ids)
        request["at"] = time.time()
        self.operator_requests.append(request)
        log.info("operator request from %s: %s", ctx.model, json.dumps(request))
        return {"accepted": True, "id": request["id"], "note": "recorded for the operator; it decides"}

    def register_capabilities(self, registry: CapabilityRegistry) -> None:
        for name, fn in (
            ("nn.embed", self.nn_embed),
            ("nn.sentiment", self.nn_sentiment),
            ("nn.generate", self.nn_generate),
            ("knowledge.query", self.knowledge_query),
            ("knowledge.upsert", self.knowledge_upsert),
            ("functions.invoke", self.functions_invoke),
            ("operator.request", self.operator_request),
        ):
            if registry.get(name) is None:
                registry.register(name, fn)

    # --- catalog factories -----------------------------------------------------------------
    def builtin_bundle(self, request: SourceRequest) -> ModelBundle:
        from tars_guests.apps import app_dir, build_app
        from tars_guests.compiled import build_compiled

        app, inputs, outputs = BUILTIN_GUESTS[request.name]
        runtime: Any = None
        if app == "embedding":
            runtime = self.embedder  # load now, so the first request does not pay for it
        # Both resolve once per process (resolving hashes the guest's sources): a model woken from zero
        # does not pay for it again.
        compiled = COMPILED_BUILTINS.get(request.name)
        component = build_compiled(compiled) if compiled else build_app(app)
        return ModelBundle(
            guest=GuestSource(component=component, app_dir=app_dir(app)),
            runtime=runtime,
            inputs=inputs,
            outputs=outputs,
        )

    def file_bundle(self, request: SourceRequest) -> ModelBundle:
        """file:///dir: a GPT-2-format checkpoint for kind text-generation; for other kinds a
        prebuilt component (``.wasm``) or a guest app directory (with ``app.py``)."""
        from tars_api.tarsmodel import ModelKind
        from tars_guests.apps import app_dir, build_app
        from tars_guests.build import build_guest

        path = request.path
        if path is None:
            raise ValueError("file:// source without a path")
        if request.spec.kind == ModelKind.TEXT_GENERATION:
            model = GPT2Model(path, request.spec.precision)
            key = request.key
            token_limit = request.spec.max_tokens or DEFAULT_TOKEN_LIMIT
            self.register_generator(key, model, token_limit)
            services = self

            def own_generate(_ctx: CallContext, args: dict[str, Any]) -> Any:
                return model.generate(generation_request(args), token_limit).to_json()

            return ModelBundle(
                guest=GuestSource(component=build_app("text_generation"), app_dir=app_dir("text_generation")),
                capabilities={"nn.generate": own_generate},
                runtime=model,
                close=lambda: services.unregister_generator(key),
                inputs=[{"name": "prompt", "datatype": "BYTES", "shape": [1]}],
                outputs=[{"name": "text", "datatype": "BYTES", "shape": [1]}],
            )
        if path.suffix == ".wasm" and path.is_file():
            return ModelBundle(guest=GuestSource(component=path))
        if (path / "app.py").is_file():
            return ModelBundle(guest=GuestSource(component=build_guest(path), app_dir=path))
        raise FileNotFoundError(f"{path}: not a .wasm component or a guest app directory")

    def install(self, catalog: Catalog, capabilities: CapabilityRegistry) -> None:
        for name in BUILTIN_GUESTS:
            catalog.builtins[name] = self.builtin_bundle
        catalog.schemes["file"] = self.file_bundle
        self.register_capabilities(capabilities)
