"""Embeddings: the real local model (no mocks) and the openai provider against a
real HTTP server on 127.0.0.1 that imitates ``POST /v1/embeddings``."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import anyio
import numpy as np
import pytest

from crm_mcp.tools.engines.embeddings import (
    OPENAI_API_KEY_ENV,
    EmbeddingConfigError,
    EmbeddingProviderError,
    LocalEmbedder,
    make_embedder,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---------------------------------------------------------------- local model


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    embedder = make_embedder("local")
    assert isinstance(embedder, LocalEmbedder)
    embedder.warm_up()
    return embedder


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


async def test_local_shapes_dtype_normalised(local: LocalEmbedder) -> None:
    assert (local.provider, local.model, local.dimension) == ("local", "all-MiniLM-L6-v2", 384)
    docs = await local.embed_documents(["Reset your password", "Billing FAQ", "Webhooks retry five times."])
    assert docs.shape == (3, 384) and docs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    q = await local.embed_query("how do I reset my password")
    assert q.shape == (384,) and q.dtype == np.float32
    assert abs(np.linalg.norm(q) - 1.0) < 1e-5
    empty = await local.embed_documents([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


async def test_local_deterministic_and_query_matches_document(local: LocalEmbedder) -> None:
    text = "Agents with the Supervisor role can reassign tickets."
    a = await local.embed_documents([text, "other text"])
    b = await local.embed_documents([text, "other text"])
    np.testing.assert_array_equal(a, b)
    q = await local.embed_query(text)
    np.testing.assert_allclose(q, a[0], atol=1e-5)


async def test_local_paraphrase_beats_unrelated(local: LocalEmbedder) -> None:
    v = await local.embed_documents(
        ["how do I reset my password", "I forgot my login credentials", "pricing of the enterprise plan"]
    )
    paraphrase, unrelated = _cos(v[0], v[1]), _cos(v[0], v[2])
    assert paraphrase > 0.5, paraphrase
    assert unrelated < 0.25, unrelated
    assert paraphrase > unrelated + 0.3


async def test_local_batch_equals_one_by_one(local: LocalEmbedder) -> None:
    texts = [
        "hi",
        "how do I reset my password",
        "",
        " ".join(["The invoice export fails when the date range spans two fiscal years."] * 25),
        "Refunds for annual plans are pro rata within fourteen days of renewal, see the billing policy.",
        "ok",
    ]
    # One batch holding everything (padding to the longest), and the default batching.
    wide = LocalEmbedder(batch_size=32)
    batched = await wide.embed_documents(texts)
    default = await local.embed_documents(texts)
    single = np.stack([(await local.embed_documents([t]))[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    np.testing.assert_allclose(default, single, atol=1e-4)


async def test_local_empty_and_very_long_inputs(local: LocalEmbedder) -> None:
    long_text = " ".join(f"word{i % 97} ticket" for i in range(5000))  # 10k words
    assert len(long_text.split()) == 10_000
    v = await local.embed_documents(["", long_text])
    assert np.all(np.isfinite(v))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # Truncated at the model's max length: more words after the cut change nothing.
    v2 = await local.embed_query(long_text + " completely different ending about pricing")
    np.testing.assert_allclose(v2, v[1], atol=1e-5)
    q = await local.embed_query("")
    np.testing.assert_allclose(q, v[0], atol=1e-5)


async def test_local_does_not_block_event_loop(local: LocalEmbedder) -> None:
    docs = [" ".join(["Customers can export contacts to CSV with custom fields."] * 15)] * 24
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.005)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        start = time.perf_counter()
        out = await local.embed_documents(docs)
        elapsed = time.perf_counter() - start
        tg.cancel_scope.cancel()
    assert out.shape == (24, 384)
    # The loop kept running while the model worked in a worker thread.
    assert ticks >= max(3, int(elapsed / 0.005 * 0.3)), (ticks, elapsed)


async def test_local_concurrent_use(local: LocalEmbedder) -> None:
    texts = [f"question number {i} about billing" for i in range(12)]
    expected = await local.embed_documents(texts)
    results: dict[int, np.ndarray] = {}

    async def one(i: int) -> None:
        results[i] = await local.embed_query(texts[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(texts)):
            tg.start_soon(one, i)
    np.testing.assert_allclose(np.stack([results[i] for i in range(len(texts))]), expected, atol=1e-5)


def test_local_loads_lazily_and_once_across_threads() -> None:
    embedder = make_embedder("local")
    assert isinstance(embedder, LocalEmbedder)
    assert not embedder.loaded  # building an embedder costs nothing
    barrier = threading.Barrier(4)
    sessions: list[object] = []

    def load() -> None:
        barrier.wait()
        embedder.warm_up()
        sessions.append(embedder._session)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert embedder.loaded
    assert len(sessions) == 4 and all(s is sessions[0] for s in sessions)


def test_local_checksum_mismatch_is_config_error() -> None:
    embedder = LocalEmbedder(model_sha256="0" * 64)
    with pytest.raises(EmbeddingConfigError, match="sha256"):
        embedder.warm_up()


def test_local_rejects_other_models() -> None:
    with pytest.raises(EmbeddingConfigError, match="all-MiniLM-L6-v2"):
        make_embedder("local", model="bge-large")


# ------------------------------------------------------------- config errors


def test_unknown_provider_lists_valid_ones() -> None:
    with pytest.raises(EmbeddingConfigError) as info:
        make_embedder("cohere")
    assert "local" in str(info.value) and "openai" in str(info.value)


def test_openai_without_key_names_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OPENAI_API_KEY_ENV, raising=False)
    with pytest.raises(EmbeddingConfigError, match=OPENAI_API_KEY_ENV):
        make_embedder("openai")


def test_openai_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPENAI_API_KEY_ENV, "sk-env")
    embedder = make_embedder("openai")
    assert (embedder.provider, embedder.model, embedder.dimension) == ("openai", "text-embedding-3-small", 1536)
    assert make_embedder("openai", model="text-embedding-3-large").dimension == 3072


def test_openai_package_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # makes `import openai` fail
    with pytest.raises(EmbeddingConfigError, match=r"pip install 'crm-mcp\[openai\]'"):
        make_embedder("openai", api_key="sk-test")


# ------------------------------------------------- openai against a real server


def _fake_vector(text: str, dim: int) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=dim).tolist()


class FakeOpenAI:
    """A threaded HTTP server imitating POST /v1/embeddings."""

    def __init__(self) -> None:
        self.mode = "ok"  # "ok" | "429-once" | "always-500"
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        self.auth: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                fake.statuses.append(status)
                self.send_response(status)
                if status >= 429:  # the client honours it: keeps the retry tests fast
                    self.send_header("retry-after-ms", "10")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                fake.auth.append(self.headers.get("Authorization"))
                if self.path != "/v1/embeddings":
                    return self._reply(404, {"error": {"message": "not found"}})
                if fake.mode == "always-500" or (fake.mode == "429-once" and len(fake.requests) == 1):
                    status = 500 if fake.mode == "always-500" else 429
                    return self._reply(status, {"error": {"message": "try later", "type": "server_error"}})
                inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                dim = body.get("dimensions") or {"text-embedding-3-large": 3072}.get(body["model"], 1536)
                data = [
                    {"object": "embedding", "index": i, "embedding": _fake_vector(t, dim)}
                    for i, t in enumerate(inputs)
                ]
                data.reverse()  # the client must order by index
                self._reply(
                    200,
                    {
                        "object": "list",
                        "data": data,
                        "model": body["model"],
                        "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        fake.thread.join(timeout=5)


def _expected(texts: list[str], dim: int) -> np.ndarray:
    v = np.asarray([_fake_vector(t, dim) for t in texts], dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def test_openai_batches_and_retries_429(fake_openai: FakeOpenAI) -> None:
    fake_openai.mode = "429-once"
    embedder = make_embedder(
        "openai", api_key="sk-test", base_url=fake_openai.base_url, dimensions=8
    )
    assert embedder.dimension == 8
    texts = [f"article chunk {i}" for i in range(600)]
    out = await embedder.embed_documents(texts)
    assert out.shape == (600, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, _expected(texts, 8), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert fake_openai.statuses == [429, 200, 200, 200]
    sizes = [len(r["input"]) for r in fake_openai.requests]
    assert sizes == [256, 256, 256, 88]
    assert all(r["dimensions"] == 8 and r["model"] == "text-embedding-3-small" for r in fake_openai.requests)
    assert set(fake_openai.auth) == {"Bearer sk-test"}
    q = await embedder.embed_query("article chunk 7")
    np.testing.assert_allclose(q, out[7], atol=1e-6)
    await embedder.aclose()


async def test_openai_default_dimension_without_param(fake_openai: FakeOpenAI) -> None:
    embedder = make_embedder("openai", api_key="sk-test", base_url=fake_openai.base_url)
    out = await embedder.embed_documents(["a", "b"])
    assert out.shape == (2, 1536)
    assert "dimensions" not in fake_openai.requests[0]


async def test_openai_persistent_500_raises_after_bounded_retries(fake_openai: FakeOpenAI) -> None:
    fake_openai.mode = "always-500"
    embedder = make_embedder(
        "openai", api_key="sk-test", base_url=fake_openai.base_url, max_retries=3
    )
    start = time.perf_counter()
    with pytest.raises(EmbeddingProviderError, match="HTTP 500") as info:
        await embedder.embed_documents(["hello"])
    assert time.perf_counter() - start < 5
    assert len(fake_openai.requests) == 4  # first try + 3 retries
    assert "sk-test" not in str(info.value)


async def test_openai_unreachable_server_is_provider_error() -> None:
    # A port that was just free on loopback: connection refused, retried, then an error.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    embedder = make_embedder(
        "openai", api_key="sk-test", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1
    )
    with pytest.raises(EmbeddingProviderError, match="cannot reach"):
        await embedder.embed_query("hello")
