"""Load and faults on a live server: a full queue answers 429 + Retry-After at once; a client
that disconnects (streaming or not) frees its slot and its row stops; SIGTERM with requests
in flight stops taking new ones, finishes those, exits 0; a corrupt artifact never reports ready."""

import json
import re
import signal
import socket
import threading
import time

import pytest

from .live import LONG, Server, open_stream, request, sse_events


def _model(srv):
    return request(srv.port, "GET", "/v1/models")[2]["data"][0]["id"]


def _long(model, **kw):
    return {"model": model, "prompt": "Hello", "max_tokens": LONG, "temperature": 0, "ignore_eos": True, **kw}


@pytest.fixture
def make_server(serve_artifact, tmp_path):
    made = []

    def make(*flags):
        made.append(Server(serve_artifact, tmp_path, *flags).wait_ready())
        return made[-1]

    yield make
    for s in made:
        s.stop()


def test_full_queue_answers_429_at_once_and_the_rest_complete(make_server):
    srv = make_server("--max-batch", "1", "--max-queue", "1")
    model = _model(srv)
    results = [None] * 6

    def ask(i):
        t0 = time.perf_counter()
        status, hdrs, body = request(srv.port, "POST", "/v1/completions", body=_long(model, max_tokens=400))
        results[i] = (status, hdrs, body, time.perf_counter() - t0)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    threads[0].start()  # the first one running before the rest arrive, however busy the machine
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "edgedelta_running_requests 1" not in request(srv.port, "GET", "/metrics")[2]:
        time.sleep(0.02)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(60)
    statuses = sorted(r[0] for r in results)
    assert set(statuses) <= {200, 429} and statuses.count(429) >= 1 and statuses.count(200) >= 2, statuses
    for status, hdrs, body, dt in results:
        if status == 429:
            assert hdrs["retry-after"] == "1" and body["error"]["code"] == "queue_full"
            assert body["error"]["type"] == "rate_limit_error"
        else:
            assert body["usage"]["completion_tokens"] == 400
    fastest_ok = min(dt for s, _, _, dt in results if s == 200)
    assert max(dt for s, _, _, dt in results if s == 429) < fastest_ok  # refused at once, not after waiting


def test_stream_disconnect_frees_the_slot_and_stops_the_row(make_server):
    srv = make_server("--max-batch", "1")
    model = _model(srv)
    conn, resp = open_stream(srv.port, _long(model))
    assert resp.status == 200
    first = next(sse_events(resp))
    assert first["choices"][0]["text"] is not None
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-stream
    conn.close()
    t0 = time.perf_counter()
    status, _, body = request(srv.port, "POST", "/v1/completions", body=_long(model, max_tokens=5))
    assert status == 200 and body["usage"]["completion_tokens"] == 5
    _assert_cancelled_early(srv, time.perf_counter() - t0)


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_before_any_answer_frees_the_slot(make_server, stream):
    srv = make_server("--max-batch", "1")
    model = _model(srv)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    body = json.dumps(_long(model, stream=stream)).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    time.sleep(0.05)  # the request is taken into a batch
    sock.close()
    t0 = time.perf_counter()
    status, _, answer = request(srv.port, "POST", "/v1/completions", body=_long(model, max_tokens=5))
    assert status == 200 and answer["usage"]["completion_tokens"] == 5
    _assert_cancelled_early(srv, time.perf_counter() - t0)


def _assert_cancelled_early(srv, wait_s):
    deadline = time.monotonic() + 10
    while "finish=cancelled" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(ln for ln in srv.log().splitlines() if "finish=cancelled" in ln)
    done = int(re.search(r"completion=(\d+)", line).group(1))
    assert " 499 " in line and done < LONG, line
    metrics = request(srv.port, "GET", "/metrics")[2]
    assert "edgedelta_requests_cancelled_total 1" in metrics


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0(make_server):
    srv = make_server()
    model = _model(srv)
    streams = [open_stream(srv.port, _long(model, prompt=p)) for p in ("Hello", "Check the pump", "The valve")]
    events = [sse_events(resp) for _, resp in streams]
    for ev in events:
        next(ev)  # every request is running
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    try:  # a new request is refused: the socket is closed, or a 503 on a connection still open
        status, hdrs, body = request(srv.port, "POST", "/v1/completions", body=_long(model, max_tokens=4), timeout=5)
        assert status == 503 and body["error"]["code"] == "shutting_down"
    except ConnectionError:
        pass
    for ev in events:  # each stream in flight ends normally, all its tokens sent
        finals = [e for e in ev if e["choices"] and e["choices"][0]["finish_reason"]]
        assert [e["choices"][0]["finish_reason"] for e in finals] == ["length"]
    for conn, _ in streams:
        conn.close()
    assert srv.proc.wait(30) == 0
    log = srv.log()
    running = int(re.search(r"draining: (\d+) running", log).group(1))
    assert running >= 1, log  # the signal came while requests were running
    assert log.count(f"completion={LONG} finish=length") == 3 and log.rstrip().endswith("stopped")
    assert "Traceback" not in log


def test_corrupt_artifact_never_ready_and_exits_2(serve_artifact, tmp_path):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(serve_artifact, art)
    (art / "config.json").write_text((art / "config.json").read_text().replace("{", '{"x": 1,', 1))
    srv = Server(art, tmp_path)
    assert srv.proc.wait(60) == 2
    log = srv.log()
    assert "config.json" in log.splitlines()[-1] and "edgedelta serve: error:" in log.splitlines()[-1]
    assert '"ready"' not in log and "Traceback" not in log
