"""Every bad request gets a 4xx with OpenAI's error object naming the bad field, one log line
each and nothing else in the server log; the official client raises the matching error."""

import openai
import pytest

from .live import API_KEY, request

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CTX = 2048  # the test artifact's context


def chat(**kw):
    return {"model": "MODEL", "messages": [{"role": "user", "content": "Hello"}], **kw}


def comp(**kw):
    return {"model": "MODEL", "prompt": "Hello", **kw}


# (path, body, headers, status, param, code)
CASES = {
    "malformed JSON": ("/v1/chat/completions", b'{"model": "x", "messages": [', AUTH, 400, None, "invalid_json"),
    "body not an object": ("/v1/completions", b"[1, 2]", AUTH, 400, None, "invalid_json"),
    "max_tokens a string": ("/v1/completions", comp(max_tokens="ten"), AUTH, 400, "max_tokens", None),
    "max_tokens a bool": ("/v1/completions", comp(max_tokens=True), AUTH, 400, "max_tokens", None),
    "temperature a string": ("/v1/chat/completions", chat(temperature="hot"), AUTH, 400, "temperature", None),
    "temperature out of range": ("/v1/chat/completions", chat(temperature=3), AUTH, 400, "temperature", None),
    "top_p out of range": ("/v1/completions", comp(top_p=1.5), AUTH, 400, "top_p", None),
    "stream not a bool": ("/v1/completions", comp(stream="yes"), AUTH, 400, "stream", None),
    "stop a number": ("/v1/completions", comp(stop=5), AUTH, 400, "stop", None),
    "seed negative": ("/v1/completions", comp(seed=-1), AUTH, 400, "seed", None),
    "messages not a list": ("/v1/chat/completions", chat(messages="Hello"), AUTH, 400, "messages", None),
    "message without content": ("/v1/chat/completions", chat(messages=[{"role": "user"}]), AUTH, 400,
                                "messages[0].content", None),
    "unknown role": ("/v1/chat/completions", chat(messages=[{"role": "robot", "content": "x"}]), AUTH, 400,
                     "messages[0].role", None),
    "unknown field": ("/v1/completions", comp(temprature=0.5), AUTH, 400, "temprature", "unknown_parameter"),
    "n of 2": ("/v1/completions", comp(n=2), AUTH, 400, "n", "unsupported_value"),
    "empty prompt": ("/v1/completions", comp(prompt=""), AUTH, 400, "prompt", None),
    "prompt longer than the context": ("/v1/completions", comp(prompt="pump " * 3000), AUTH, 400, "prompt",
                                       "context_length_exceeded"),
    "chat longer than the context": ("/v1/chat/completions", chat(messages=[{"role": "user", "content": "pump " * 3000}]),
                                     AUTH, 400, "messages", "context_length_exceeded"),
    "max_tokens zero": ("/v1/completions", comp(max_tokens=0), AUTH, 400, "max_tokens", None),
    "max_tokens negative": ("/v1/chat/completions", chat(max_tokens=-5), AUTH, 400, "max_tokens", None),
    "max_tokens past the context": ("/v1/completions", comp(max_tokens=CTX), AUTH, 400, "max_tokens",
                                    "context_length_exceeded"),
    "token id outside the vocabulary": ("/v1/completions", comp(prompt=[1, 10**9]), AUTH, 400, "prompt", None),
    "missing model": ("/v1/completions", {"prompt": "Hello"}, AUTH, 400, "model", None),
    "unknown model": ("/v1/completions", comp(model="gpt-4o"), AUTH, 404, "model", "model_not_found"),
    "bad API key": ("/v1/chat/completions", chat(), {"Authorization": "Bearer wrong"}, 401, None, "invalid_api_key"),
    "no API key": ("/v1/chat/completions", chat(), {}, 401, None, "invalid_api_key"),
    "body too large": ("/v1/completions", b"x" * (5 << 20), AUTH, 413, None, "request_too_large"),
    "unknown path": ("/v1/embeddings", comp(), AUTH, 404, None, "not_found"),
}


@pytest.fixture(scope="module")
def model_id(server):
    return request(server.port, "GET", "/v1/models", headers=AUTH)[2]["data"][0]["id"]


def _fill(body, model_id):
    if isinstance(body, dict) and body.get("model") == "MODEL":
        return {**body, "model": model_id}
    return body


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_is_a_4xx_naming_the_field(server, model_id, case):
    path, body, headers, status, param, code = CASES[case]
    before = server.log().count("\n")
    got, hdrs, answer = request(server.port, "POST", path, body=_fill(body, model_id), headers=headers)
    assert got == status, answer
    err = answer["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param and err["code"] == code
    assert hdrs["content-type"] == "application/json"
    new = server.log().splitlines()[before:]  # exactly one line for this request
    assert len(new) == 1 and f" {path} {status} " in new[0], new


def test_wrong_method_is_405_json(server):
    status, hdrs, answer = request(server.port, "GET", "/v1/completions", headers=AUTH)
    assert status == 405 and answer["error"]["code"] == "method_not_allowed" and "POST" in hdrs.get("allow", "")


def test_official_client_raises_the_matching_errors(server, model_id):
    url = f"http://127.0.0.1:{server.port}/v1"
    with openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model=model_id, prompt="Hello", max_tokens=CTX)
        assert e.value.body["param"] == "max_tokens"
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    with openai.OpenAI(base_url=url, api_key="wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            c.models.list()


def test_server_still_answers_and_log_has_no_traceback(server, model_id):
    status, _, answer = request(server.port, "POST", "/v1/completions", headers=AUTH,
                                body={"model": model_id, "prompt": "Hello", "max_tokens": 4, "temperature": 0})
    assert status == 200 and answer["usage"]["completion_tokens"] >= 1
    log = server.log()
    assert "Traceback" not in log and " 500 " not in log
