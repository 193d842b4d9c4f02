"""The official `openai` client against a live server: chat, completion, streaming, usage,
stop strings, seeds, the model list; greedy answers equal Session.generate's, alone and when
several requests share a batch; /health and /metrics."""

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from edgedelta.runtime import Session

from .live import API_KEY, request


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=API_KEY, max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def session(serve_artifact):
    return Session.from_dir(serve_artifact, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def test_models_lists_the_artifact(client, serve_artifact):
    models = client.models.list().data
    assert [m.id for m in models] == [serve_artifact.name] and models[0].owned_by == "edgedelta"
    assert client.models.retrieve(serve_artifact.name).id == serve_artifact.name


def test_chat_matches_generate_and_reports_usage(client, session, model_id):
    r = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Check the pump"}],
                                       max_tokens=12, temperature=0)
    ref = session.generate("Check the pump", chat=True, max_new_tokens=12)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == ref.prompt_tokens
    assert r.usage.completion_tokens == len(ref.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_stream_equals_non_stream_and_ends_with_usage(client, model_id):
    kw = dict(model=model_id, prompt="The pressure valve", max_tokens=20, temperature=0,
              extra_body={"ignore_eos": True})
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text and whole.choices[0].finish_reason == "length"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20 == whole.usage.completion_tokens


def test_chat_stream_sends_role_then_content(client, model_id):
    kw = dict(model=model_id, messages=[{"role": "system", "content": "Be short."}, {"role": "user", "content": "Hello"}],
              max_tokens=8, temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_requests_batched_together_each_get_their_own_greedy_answer(client, session, model_id, server):
    prompts = ["Hello world", "Maintenance log: replaced filter", "The quick brown fox", "Unicode: café"]
    lengths = [5, 17, 9, 13]  # each row stops on its own

    def ask(i):
        return client.completions.create(model=model_id, prompt=prompts[i], max_tokens=lengths[i], temperature=0,
                                         extra_body={"ignore_eos": True})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    for p, n, a in zip(prompts, lengths, answers):
        assert a.choices[0].text == session.generate(p, max_new_tokens=n, eos=False).text
        assert a.usage.completion_tokens == n
    assert any(f"batch={b}" in server.log() for b in (2, 3, 4))  # at least two of them shared a batch


def test_stop_string_ends_the_answer_before_it(client, model_id):
    kw = dict(model=model_id, prompt="Check the pressure", max_tokens=40, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    stop = full[10:13]
    assert len(stop) == 3
    cut = client.completions.create(**kw, stop=[stop, "never-there"])
    assert cut.choices[0].text == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stop=stop, stream=True))
    assert streamed == cut.choices[0].text


def test_seed_makes_sampling_repeatable(client, model_id):
    kw = dict(model=model_id, prompt="Hello", max_tokens=24, temperature=1.0, top_p=0.9, extra_body={"ignore_eos": True})
    a, b = (client.completions.create(**kw, seed=7).choices[0].text for _ in range(2))
    others = {client.completions.create(**kw, seed=s).choices[0].text for s in (8, 9, 10)}
    assert a == b and others != {a}


def test_health_and_metrics(server, client, model_id):
    status, _, body = request(server.port, "GET", "/health")
    assert status == 200 and body == {"status": "ready", "model": model_id}
    client.completions.create(model=model_id, prompt="Hello", max_tokens=3, temperature=0)
    status, headers, text = request(server.port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    values = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}
    assert values['edgedelta_requests_total{endpoint="completions",status="200"}'] >= 1
    assert values["edgedelta_completion_tokens_total"] >= 3 and values["edgedelta_prompt_tokens_total"] >= 1
    assert values["edgedelta_time_to_first_token_seconds_count"] >= 1
    assert values['edgedelta_request_duration_seconds_bucket{le="+Inf"}'] >= 1
    assert values["edgedelta_queue_depth"] == 0 and values["edgedelta_ready"] == 1
    assert values["process_resident_memory_bytes"] > 10e6
