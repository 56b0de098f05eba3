"""`ragtune serve` as clients meet it: a real uvicorn server on loopback, the packaged SmolLM2 on
llama.cpp and MiniLM, driven by the official openai client (sync, async, streaming), LangChain's
ChatOpenAI and plain httpx. One server for the module (models load once); generation is short."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from ragtune.generate.llamacpp import unavailable_reason

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))]

KEY = "serve-test-key-0123456789"
MODEL = "kb/SmolLM2-135M-Instruct"
QUESTION = "What colour is the Halvard bridge?"
DOCS = {
    "festival.txt": "The Zorblat festival is held in the town of Kremsville every March. Visitors eat smoked plums.",
    "bridge.txt": "The Halvard bridge crosses the river Otter. It was finished in 1921 and is painted green.",
    "orchard.txt": "Quince orchards need well drained soil and a cold winter to set fruit reliably.",
    "ferries.md": "# Ferries\n\n" + " ".join(
        f"Ferry number {i} leaves the north pier of Brindle island at {6 + i % 12} o'clock and carries "
        f"{20 + i} passengers across the sound." for i in range(40)),
}


def write_runs(path, dataset):
    """Two stored evaluation runs over the same 20 questions (the runs page lists and compares them)."""
    from ragtune.store.runs import RunsDB

    with open(dataset, "w") as handle:
        for i in range(20):
            handle.write(json.dumps({"id": f"q{i}", "question": f"question {i}?", "answers": [f"a{i}"]}) + "\n")
    ids = []
    with RunsDB(path) as db:
        for strategy, good in (("base", 0.2), ("rag", 0.7)):
            run_id = db.create_run(strategy=strategy, dataset_path=str(dataset), dataset_sha256="x", model="m",
                                   model_hash=None, kb_path=None, k=None, config={})
            for i in range(20):
                db.add_prediction(run_id, f"q{i}", prediction=f"p{i}", scores={"f1": float((i * 7 % 10) / 10 < good)},
                                  retrieved_ids=[], prompt_tokens=10, completion_tokens=3, latency_s=0.1)
            db.finish(run_id)
            ids.append(run_id)
    return ids


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedder):
    from ragtune.config import KBConfig
    from ragtune.kb import KnowledgeBase
    from ragtune.serve.app import create_app
    from ragtune.serve.server import BackgroundServer
    from ragtune.serve.settings import ModelSettings, ServeSettings
    from ragtune.serve.state import ServeState

    root = tmp_path_factory.mktemp("serve")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    with KnowledgeBase.init(root / "kb", KBConfig(chunk_size=64, chunk_overlap=8)) as kb:  # short prompts
        kb._embedder = embedder
        kb.ingest([docs])
    run_ids = write_runs(root / "kb" / "runs.db", root / "eval.jsonl")
    smol = "SmolLM2-135M-Instruct"  # pinned for speed (the default is the best installed model)
    models = [ModelSettings(model=smol), ModelSettings(model=smol, id="raft", prompt="raft")]  # one engine, two prompts
    settings = ServeSettings(api_keys=[KEY], threads=1, slots=2, queue=1, max_tokens=48, k=3, max_request_mb=0.05,
                             max_upload_mb=0.2, models=models)
    state = ServeState.open([root / "kb"], settings, embedder=embedder)
    with BackgroundServer(create_app(state)) as running:
        client = httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        yield SimpleNamespace(url=running.url, api=running.url + "/v1", state=state, root=root, http=client,
                              run_ids=run_ids)
        client.close()
    state.close()


def ask_body(question=QUESTION, **extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": question}], **extra}


def metric(server, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(server.http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# -- OpenAI-compatible clients ---------------------------------------------------------------
def test_models_list_one_per_kb_and_generator(server):
    import openai

    client = openai.OpenAI(base_url=server.api, api_key=KEY)
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL, "kb/raft"]
    assert models[0].model_extra["ragtune"]["runtime"] == "llamacpp"
    assert client.models.retrieve(MODEL).id == MODEL


def check_references(references, answer_text=None):
    assert references, "a cited answer must carry references"
    for ref in references:
        assert ref["source"].endswith(tuple(DOCS)) and ref["text"] and ref["n"] >= 1
        assert ref["chunk_id"] >= 1 and ref["end"] > ref["start"]


def test_openai_client_plain_answer_has_references(server):
    import openai

    client = openai.OpenAI(base_url=server.api, api_key=KEY)
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}])
    message = response.choices[0].message
    assert "green" in message.content.lower()
    check_references(message.model_extra["references"])
    assert any(r["source"].endswith("bridge.txt") for r in message.model_extra["references"])
    assert response.usage.prompt_tokens > 50 and 0 < response.usage.completion_tokens <= 48
    assert response.model_extra["ragtune"]["found"] is True


def test_openai_client_stream_keeps_references_on_the_last_chunk(server):
    """Other RAG servers drop references when streaming; ours sends them on the final chunk's delta."""
    import openai

    client = openai.OpenAI(base_url=server.api, api_key=KEY)
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # streamed: the answer (a grounded prompt's quotes arrive first, as reasoning_content)
    streamed = [c for c in chunks if c.choices and (c.choices[0].delta.content
                                                    or (c.choices[0].delta.model_extra or {}).get("reasoning_content"))]
    assert "green" in text.lower() and len(streamed) > 3
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    check_references(final.choices[0].delta.model_extra["references"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_async_openai_client_plain_and_streaming(server):
    import openai

    async def both():
        client = openai.AsyncOpenAI(base_url=server.api, api_key=KEY)
        plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}])
        stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                                      stream=True)
        pieces, references = [], None
        async for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
            references = chunk.choices[0].delta.model_extra.get("references", references)
        return await plain, "".join(pieces), references

    plain, streamed, references = asyncio.run(both())
    check_references(plain.choices[0].message.model_extra["references"])
    assert streamed.strip() and "green" in streamed.lower()
    check_references(references)


def test_langchain_chat_openai_invoke_and_stream(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=server.api, api_key=KEY, temperature=0, max_tokens=48)
    answer = llm.invoke(QUESTION)
    assert "green" in answer.content.lower()
    streamed = "".join(chunk.content for chunk in llm.stream(QUESTION))
    assert "green" in streamed.lower()


def test_completions_plain_and_streamed(server):
    import openai

    client = openai.OpenAI(base_url=server.api, api_key=KEY)
    plain = client.completions.create(model=MODEL, prompt="Where is the Zorblat festival held?")
    assert "Kremsville" in plain.choices[0].text
    assert plain.choices[0].model_extra["references"]
    chunks = list(client.completions.create(model=MODEL, prompt="Where is the Zorblat festival held?", stream=True))
    assert "Kremsville" in "".join(c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].model_extra["references"]


def test_a_raft_model_is_served_with_its_training_prompt(server):
    """`prompt: raft`: RAFT's document wrapping; the chain of thought (before <ANSWER>:) streams as
    reasoning_content, the answer as content, and verified quotes become references. SmolLM2 is not
    RAFT-trained, so only the shape is checked here (the parsing is checked in test_serve_unit)."""
    import openai

    client = openai.OpenAI(base_url=server.api, api_key=KEY)
    messages = [{"role": "user", "content": QUESTION}]
    plain = client.chat.completions.create(model="kb/raft", messages=messages, max_tokens=64)
    summary = plain.model_extra["ragtune"]
    assert {"protocol", "quotes", "invented_quotes"} <= set(summary) and plain.choices[0].message.content
    assert summary["protocol"] == "raft"
    for ref in plain.choices[0].message.model_extra["references"]:
        assert ref["quote"] in " ".join(ref["text"].split())
    content, reasoning, final = "", "", None
    for chunk in client.chat.completions.create(model="kb/raft", messages=messages, max_tokens=64, stream=True):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        final = delta if chunk.choices[0].finish_reason else final
    assert content.strip() and "references" in final.model_extra
    assert "<ANSWER>:" not in content


def test_follow_up_is_retrieved_with_its_context(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "When was the Halvard bridge finished?"},
                                         {"role": "assistant", "content": "It was finished in 1921 [1]."},
                                         {"role": "user", "content": "What colour is it painted?"}]}
    data = server.http.post("/v1/chat/completions", json=body).json()
    assert "Halvard" in data["ragtune"]["query"]  # "it" resolved by carrying the previous question
    assert any(r["source"].endswith("bridge.txt") for r in data["choices"][0]["message"]["references"])


def test_embeddings_float_and_base64(server, embedder):
    import openai

    client = openai.OpenAI(base_url=server.api, api_key=KEY)
    result = client.embeddings.create(model=MODEL, input=["smoked plums", "green bridge"])  # base64 on the wire
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (2, 384) and result.usage.prompt_tokens >= 4
    np.testing.assert_allclose(vectors, embedder.encode(["smoked plums", "green bridge"]), atol=1e-5)
    raw = server.http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "x y",
                                                   "encoding_format": "base64"}).json()
    assert np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4").shape == (384,)
    bad = server.http.post("/v1/embeddings", json={"model": MODEL, "input": [[1, 2, 3]]})
    assert bad.status_code == 400 and "token id" in bad.json()["error"]["message"]


# -- ragtune endpoints -----------------------------------------------------------------------
def test_search_with_filters_and_explain(server):
    hits = server.http.post("/v1/search", json={"query": "green bridge", "k": 2, "explain": True}).json()["data"]
    assert hits[0]["source"].endswith("bridge.txt") and {"dense", "lexical", "fused"} <= set(hits[0]["ranks"])
    filtered = server.http.post("/v1/search", json={"query": "green bridge", "filters": ["source^=" + str(server.root / "docs" / "festival.txt")]}).json()
    assert [h["source"] for h in filtered["data"]] == [str(server.root / "docs" / "festival.txt")]
    by_url = server.http.get("/v1/search", params={"q": "smoked plums", "k": 1, "mode": "lexical"}).json()["data"]
    assert by_url[0]["source"].endswith("festival.txt") and "ranks" not in by_url[0]
    bad = server.http.post("/v1/search", json={"query": "x", "filters": ["year>>2"]})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_passage_shows_the_chunk_in_its_surroundings(server):
    hit = server.http.post("/v1/search", json={"query": "Ferry number 20 passengers", "k": 1}).json()["data"][0]
    passage = server.http.get(f"/v1/chunks/{hit['chunk_id']}").json()
    start, end = passage["highlight"]
    assert passage["text"][start:end] == hit["text"] and len(passage["text"]) > len(hit["text"])
    assert server.http.get("/v1/chunks/999999").status_code == 404


def test_upload_is_searchable_and_delete_removes_it(server):
    note = b"The Quarnell lighthouse keeper feeds seventeen cats every Tuesday."
    response = server.http.post("/v1/documents", files={"file": ("cats.md", note, "text/markdown")})
    assert response.status_code == 201, response.text
    doc = response.json()["documents"][0]
    stored = server.root / "kb" / "uploads" / "cats.md"
    assert stored.read_bytes() == note and doc["uploaded"]
    hits = server.http.post("/v1/search", json={"query": "lighthouse keeper cats", "k": 1}).json()["data"]
    assert hits[0]["source"] == str(stored)
    listed = server.http.get("/v1/documents").json()
    assert listed["total"] == len(DOCS) + 1
    deleted = server.http.delete(f"/v1/documents/{doc['id']}").json()
    assert deleted["deleted"] and deleted["files_removed"] == ["cats.md"] and not stored.exists()
    hits = server.http.post("/v1/search", json={"query": "lighthouse keeper cats", "k": 5}).json()["data"]
    assert all(h["source"] != str(stored) for h in hits)
    assert server.http.delete("/v1/documents/no-such-doc").status_code == 404


def raw_upload(server, filename: bytes, content: bytes = b"hello there") -> httpx.Response:
    """A multipart body written by hand: clients escape odd file names, an attacker does not."""
    boundary = b"----ragtunetest"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename +
            b'"\r\nContent-Type: text/plain\r\n\r\n' + content + b"\r\n--" + boundary + b"--\r\n")
    return server.http.post("/v1/documents", content=body,
                            headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode()})


@pytest.mark.parametrize("name", ["../evil.txt", "..\\evil.txt", "/tmp/evil.txt", "a/evil.txt", ".evil.txt",
                                  "evil.txt\x00.md", "..", "evil.exe", "evil", "../../../../tmp/evil.txt",
                                  "..%2fevil.txt"])
def test_upload_names_never_escape_the_kb(server, name):
    response = raw_upload(server, name.encode())
    assert response.status_code in (400, 415), response.text
    assert "Traceback" not in response.text and response.json()["error"]["param"] == "file"
    assert not (server.root / "evil.txt").exists() and not (server.root / "kb" / "evil.txt").exists()


def test_upload_content_and_symlink_tricks_are_refused(server):
    fake_pdf = server.http.post("/v1/documents", files={"file": ("paper.pdf", b"not a pdf at all", "application/pdf")})
    assert fake_pdf.status_code == 415 and "pdf" in fake_pdf.json()["error"]["message"]
    binary = server.http.post("/v1/documents", files={"file": ("data.txt", b"a\x00b\x00c", "text/plain")})
    assert binary.status_code == 415
    empty = server.http.post("/v1/documents", files={"file": ("empty.txt", b"", "text/plain")})
    assert empty.status_code == 400
    outside = server.root / "outside.txt"
    outside.write_text("do not touch")
    uploads = server.root / "kb" / "uploads"
    uploads.mkdir(exist_ok=True)
    (uploads / "link.txt").symlink_to(outside)
    linked = server.http.post("/v1/documents", files={"file": ("link.txt", b"overwrite attempt", "text/plain")})
    assert linked.status_code == 400 and outside.read_text() == "do not touch"
    (uploads / "link.txt").unlink()
    no_field = server.http.post("/v1/documents", files={"other": ("x.txt", b"x", "text/plain")})
    assert no_field.status_code == 400 and "`file`" in no_field.json()["error"]["message"]


# -- security and limits ---------------------------------------------------------------------
def test_keys_are_required_and_checked(server):
    import openai

    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/search"),
                         ("GET", "/v1/documents"), ("GET", "/metrics"), ("GET", "/v1/runs")):
        for headers in ({}, {"Authorization": "Bearer wrong-key-123456"}, {"Authorization": f"Basic {KEY}"}):
            response = httpx.request(method, server.url + path, headers=headers, json={})
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models", headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.api, api_key="wrong-key-123456").models.list()


def test_request_size_limits(server):
    big = server.http.post("/v1/chat/completions", json=ask_body("x" * 60_000))
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the guard counts bytes as they arrive
        yield b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}]}'

    chunked = server.http.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    huge = server.http.post("/v1/documents", files={"file": ("huge.txt", b"word " * 60_000, "text/plain")})
    assert huge.status_code == 413 and not (server.root / "kb" / "uploads" / "huge.txt").exists()


@pytest.mark.parametrize("body, status, param", [
    (b"{bad json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"model": MODEL}).encode(), 400, "messages"),
    (json.dumps({"model": MODEL, "messages": "hi"}).encode(), 400, "messages"),
    (json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400, "messages.0.role"),
    (json.dumps(ask_body() | {"messages": [{"role": "assistant", "content": "hi"}]}).encode(), 400, "messages"),
    (json.dumps(ask_body(n=2)).encode(), 400, "n"),
    (json.dumps(ask_body(max_tokens=100_000)).encode(), 400, "max_tokens"),
    (json.dumps(ask_body(temperature=9)).encode(), 400, "temperature"),
    (json.dumps(ask_body(stop=["\n"])).encode(), 400, "stop"),
    (json.dumps(ask_body(ragtune={"k": 0})).encode(), 400, "ragtune.k"),
    (json.dumps(ask_body(model="nope/nothing")).encode(), 404, "model"),
])
def test_bad_requests_get_openai_style_errors(server, body, status, param):
    response = server.http.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["param"] == param and "Traceback" not in response.text


def test_unknown_model_is_not_found_for_the_openai_client(server):
    import openai

    client = openai.OpenAI(base_url=server.api, api_key=KEY)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="kb/gpt-5", messages=[{"role": "user", "content": QUESTION}])


# -- load: disconnects and backpressure ------------------------------------------------------
def test_client_disconnect_mid_stream_frees_the_slot(server):
    before = metric(server, "ragtune_client_disconnects_total")
    body = ask_body("Describe the ferries of Brindle island in detail, one by one.", stream=True, max_tokens=400,
                    ragtune={"min_relevance": -1})
    with server.http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # the first text arrived: leave mid-answer
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if metric(server, "ragtune_client_disconnects_total") > before and metric(server, "ragtune_active_sequences") == 0:
            break
        time.sleep(0.2)
    assert metric(server, "ragtune_client_disconnects_total") == before + 1
    assert metric(server, "ragtune_active_sequences") == 0
    after = server.http.post("/v1/chat/completions", json=ask_body())
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"]


def test_searches_run_while_every_slot_is_generating(server):
    """Search does not queue behind answers: with both slots busy, concurrent searches all succeed; and
    a chat request that gives up while waiting for a slot leaves the queue."""
    import contextlib

    body = ask_body("Describe the ferries of Brindle island in detail, one by one.", stream=True, max_tokens=400,
                    ragtune={"min_relevance": -1})
    readers = []  # kept referenced: a reader garbage-collected closes its stream, which is a disconnect
    with contextlib.ExitStack() as streams:
        for _ in range(2):
            response = streams.enter_context(server.http.stream("POST", "/v1/chat/completions", json=body))
            readers.append(response.iter_lines())
            while not ('"content": "' in (line := next(readers[-1])) and '"content": ""' not in line):
                pass
        assert metric(server, "ragtune_active_sequences") == 2
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda q: server.http.post("/v1/search", json={"query": q, "k": 3}).status_code,
                                  ["ferry", "bridge", "festival", "quince", "plums", "Otter", "pier", "March"]))
        assert codes == [200] * 8
        assert metric(server, "ragtune_active_sequences") == 2  # the answers were still being generated
        # a client that gives up while queued for a slot leaves the queue at once
        with pytest.raises(httpx.ReadTimeout):
            server.http.post("/v1/chat/completions", json=ask_body(), timeout=1.0)
        deadline = time.monotonic() + 5
        while metric(server, "ragtune_queue_depth") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(server, "ragtune_queue_depth") == 0 and metric(server, "ragtune_active_sequences") == 2
    deadline = time.monotonic() + 20
    while metric(server, "ragtune_active_sequences") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(server, "ragtune_active_sequences") == 0


def test_burst_beyond_capacity_gets_429_with_retry_after(server):
    """2 slots + 1 queued: of 7 simultaneous answers some must be refused at once, none may fail."""
    def one(_):
        started = time.perf_counter()
        response = httpx.post(server.api + "/chat/completions", json=ask_body(max_tokens=48), timeout=120,
                              headers={"Authorization": f"Bearer {KEY}"})
        return response, time.perf_counter() - started

    with ThreadPoolExecutor(7) as pool:
        results = list(pool.map(one, range(7)))
    codes = sorted(r.status_code for r, _ in results)
    assert set(codes) <= {200, 429} and codes.count(200) >= 3 and 429 in codes, codes
    for response, seconds in results:
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1 and seconds < 2.0
            assert response.json()["error"]["type"] == "rate_limit_error"
    assert metric(server, "ragtune_rejected_total") >= codes.count(429)
    assert server.http.post("/v1/chat/completions", json=ask_body()).status_code == 200


def test_metrics_are_prometheus_text(server):
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(server.http.get("/metrics").text)}
    assert {"ragtune_requests", "ragtune_request_seconds", "ragtune_queue_depth", "ragtune_tokens",
            "ragtune_time_to_first_token_seconds"} <= set(families)
    assert families["ragtune_request_seconds"].type == "histogram"
    assert metric(server, "ragtune_tokens_total", kind="completion") > 0
    assert metric(server, "ragtune_requests_total", route="/v1/chat/completions", status="200") >= 5


# -- runs page API ---------------------------------------------------------------------------
def test_runs_are_listed_and_compared(server):
    runs = server.http.get("/v1/runs").json()["data"]
    assert [r["id"] for r in runs] == server.run_ids and runs[0]["predictions"] == 20
    report = server.http.post("/v1/runs/report", json={"runs": server.run_ids})
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "Recommendation" in report.text and "<svg" in report.text
    missing = server.http.post("/v1/runs/report", json={"runs": [server.run_ids[0], "nope"]})
    assert missing.status_code == 400 and "nope" in missing.json()["error"]["message"]
