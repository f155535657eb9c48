"""The pool against the scripted endpoint: replies, retries, timeouts, limits, caps, the key."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from pydantic import SecretStr

from services.llm import (
    MAX_REPLY_CHARS,
    Caps,
    Failure,
    LlmConfigError,
    LlmEndpoint,
    LlmPool,
    LlmReply,
    LlmRequest,
    ModelWeight,
    Price,
)
from tests.llm_server import (
    LlmTestServer,
    huge_reply,
    malformed_reply,
    slow_reply,
    status_reply,
    text_reply,
)

KEY = "sk-kernelmap-TEST-4f9c2e-never-log-me"


def make_pool(server: LlmTestServer, caps: Caps | None = None, **kw) -> LlmPool:
    """A pool on the test server with short timeouts and backoff."""
    endpoint = LlmEndpoint(
        base_url=server.base_url,
        api_key=SecretStr(KEY),
        models=(ModelWeight("m"),),
        prices=kw.pop("prices", {}),
        timeout_s=kw.pop("timeout_s", 0.5),
        retries=kw.pop("retries", 2),
        concurrency=kw.pop("concurrency", 4),
    )
    return LlmPool(endpoint, caps, backoff_base_s=0.01, **kw)


def request(i: int = 0, **kw) -> LlmRequest:
    kw.setdefault("max_tokens", 64)
    return LlmRequest(f"r{i}", "m", [{"role": "user", "content": f"kernel {i}"}], **kw)


def wait_for(pool: LlmPool, n: int, timeout_s: float = 10.0) -> list[LlmReply]:
    """The next ``n`` replies."""
    replies: list[LlmReply] = []
    end = time.monotonic() + timeout_s
    while len(replies) < n and time.monotonic() < end:
        replies += pool.poll(timeout_s=0.05)
    assert len(replies) == n, f"{len(replies)} of {n} replies came back"
    return replies


def only(pool: LlmPool, req: LlmRequest | None = None) -> LlmReply:
    assert pool.submit(req or request())
    (reply,) = wait_for(pool, 1)
    return reply


def test_a_reply_with_its_tokens_latency_and_cost(llm_server):
    llm_server.script(text_reply("def kernel(): ...", prompt_tokens=120, completion_tokens=30))
    with make_pool(llm_server, prices={"m": Price(2.0, 10.0)}) as pool:
        assert pool.poll() == []  # nothing yet, and no waiting
        reply = only(pool, request(max_tokens=99, temperature=0.3))
        spent = pool.spent()
    assert reply.ok and reply.text == "def kernel(): ..."
    assert (reply.request_id, reply.model, reply.attempts) == ("r0", "m", 1)
    assert (reply.prompt_tokens, reply.completion_tokens) == (120, 30)
    assert reply.cost == pytest.approx((120 * 2 + 30 * 10) / 1e6)
    assert 0 < reply.latency_s < 5
    (sent,) = llm_server.completions
    assert sent.body["model"] == "m" and sent.body["max_tokens"] == 99
    assert sent.body["temperature"] == 0.3
    assert sent.body["messages"] == [{"role": "user", "content": "kernel 0"}]
    assert (spent.requests, spent.prompt_tokens, spent.completion_tokens) == (1, 120, 30)
    assert spent.failures == {} and spent.in_flight == 0 and spent.cost == reply.cost


def test_poll_never_waits_by_default(llm_server):
    llm_server.script(slow_reply(0.3))
    with make_pool(llm_server) as pool:
        assert pool.submit(request())
        start = time.monotonic()
        assert pool.poll() == []
        assert time.monotonic() - start < 0.05
        assert pool.in_flight == 1
        wait_for(pool, 1)
        assert pool.in_flight == 0


def test_429_waits_at_least_retry_after(llm_server):
    llm_server.script(status_reply(429, retry_after="1"), text_reply("ok"))
    with make_pool(llm_server) as pool:
        reply = only(pool)
    assert reply.ok and reply.attempts == 2
    first, second = llm_server.completions
    assert second.at - first.at >= 1.0


def test_503_retry_after_as_an_http_date_is_honoured(llm_server):
    from email.utils import formatdate

    llm_server.script(status_reply(503, retry_after=formatdate(time.time() + 2, usegmt=True)))
    with make_pool(llm_server) as pool:
        reply = only(pool)
    assert reply.ok
    first, second = llm_server.completions
    assert second.at - first.at >= 0.9  # the date has whole seconds


def test_a_retry_after_too_long_to_wait_fails_at_once(llm_server):
    llm_server.script(status_reply(429, retry_after="3600"))
    with make_pool(llm_server) as pool:
        reply = only(pool)
    assert reply.failure is Failure.RATE_LIMITED and "too long" in reply.message
    assert len(llm_server.completions) == 1


def test_500s_are_retried_within_the_retries(llm_server):
    llm_server.script(status_reply(500), status_reply(502), text_reply("third time"))
    with make_pool(llm_server, retries=2) as pool:
        reply = only(pool)
    assert reply.ok and reply.text == "third time" and reply.attempts == 3


def test_500s_beyond_the_retries_fail_as_server_error(llm_server):
    llm_server.script(*[status_reply(500)] * 3, text_reply("never asked"))
    with make_pool(llm_server, retries=1) as pool:
        reply = only(pool)
        spent = pool.spent()
    assert reply.failure is Failure.SERVER_ERROR and reply.text is None
    assert reply.attempts == 2 and len(llm_server.completions) == 2
    assert "HTTP 500" in reply.message
    assert spent.failures == {"server_error": 1} and spent.attempts == 2


@pytest.mark.parametrize(
    ("status", "failure"), [(400, Failure.REFUSED), (404, Failure.REFUSED), (401, Failure.AUTH)]
)
def test_other_4xx_are_not_retried(llm_server, status, failure):
    llm_server.script(status_reply(status))
    with make_pool(llm_server) as pool:
        reply = only(pool)
    assert reply.failure is failure and len(llm_server.completions) == 1


def test_408_is_retried(llm_server):
    llm_server.script(status_reply(408))
    with make_pool(llm_server) as pool:
        assert only(pool).ok
    assert len(llm_server.completions) == 2


def test_a_reply_slower_than_the_timeout(llm_server):
    llm_server.script(slow_reply(3.0))
    with make_pool(llm_server, timeout_s=0.5, caps=Caps(max_tokens=10_000)) as pool:
        reply = only(pool, request(max_tokens=500))
        spent = pool.spent()
    assert reply.failure is Failure.TIMEOUT and reply.text is None
    assert 0.5 <= reply.latency_s < 2.0
    # not retried: the endpoint may still be generating, and billing, the first answer
    assert len(llm_server.completions) == 1
    assert spent.completion_tokens == 500  # usage unknown: the worst case is charged


def test_a_huge_reply_is_cut_and_failed(llm_server):
    llm_server.script(huge_reply(MAX_REPLY_CHARS + 50_000))
    with make_pool(llm_server) as pool:
        reply = only(pool)
    assert reply.failure is Failure.TOO_LARGE
    assert len(reply.text) == MAX_REPLY_CHARS


def test_a_malformed_body_is_a_bad_response(llm_server):
    llm_server.script(malformed_reply())
    with make_pool(llm_server) as pool:
        reply = only(pool)
    assert reply.failure is Failure.BAD_RESPONSE and reply.text is None
    assert "not a chat completion" in reply.message
    assert len(llm_server.completions) == 1


def test_an_unreachable_endpoint_is_a_connection_failure():
    server = LlmTestServer().start()
    server.stop()  # its port is now closed
    with make_pool(server, retries=1) as pool:
        reply = only(pool)
    assert reply.failure is Failure.CONNECTION and reply.attempts == 2


def test_the_request_cap_stops_submits_exactly(llm_server):
    llm_server.default = slow_reply(0.2, "ok")
    with make_pool(llm_server, caps=Caps(max_requests=5), concurrency=8) as pool:
        barrier = threading.Barrier(8)
        accepted: list[bool] = []

        def submit(i: int) -> None:
            barrier.wait()
            accepted.append(pool.submit(request(i)))

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(accepted) == [False] * 3 + [True] * 5
        replies = wait_for(pool, 5)
        assert not pool.submit(request(99))  # spent: still refused after the replies
        spent = pool.spent()
    assert all(r.ok for r in replies)
    assert len(llm_server.completions) == 5
    bodies = [r.body["messages"][0]["content"] for r in llm_server.completions]
    assert len(set(bodies)) == 5  # no request sent twice
    assert (spent.requests, spent.refused) == (5, 4)


def test_the_token_cap_holds_with_requests_in_flight(llm_server):
    llm_server.default = slow_reply(0.2, "ok")  # 11 + 7 tokens used
    caps = Caps(max_tokens=1000)
    with make_pool(llm_server, caps=caps, concurrency=8) as pool:
        sent = sum(
            pool.submit(request(i, max_tokens=200, prompt_tokens_estimate=100)) for i in range(8)
        )
        assert sent == 3  # 3 x 300 held; a fourth would hold 1200
        wait_for(pool, 3)
        assert pool.spent().tokens == 3 * 18
        assert pool.submit(request(9, max_tokens=200, prompt_tokens_estimate=100))
        wait_for(pool, 1)
        assert pool.spent().tokens <= caps.max_tokens


def test_a_cost_cap_needs_a_price():
    server = LlmTestServer().start()
    try:
        with make_pool(server, caps=Caps(max_cost=1.0)) as pool:
            with pytest.raises(LlmConfigError, match="no price"):
                pool.submit(request())
    finally:
        server.stop()
    assert server.completions == []


def test_concurrency_never_exceeds_the_limit(llm_server):
    llm_server.default = slow_reply(0.15, "ok")
    with make_pool(llm_server, concurrency=3) as pool:
        assert all(pool.submit(request(i)) for i in range(10))
        assert pool.in_flight == 10
        replies = wait_for(pool, 10)
    assert all(r.ok for r in replies)
    assert llm_server.max_concurrent == 3


def test_close_cancels_what_was_not_sent(llm_server):
    llm_server.default = slow_reply(0.3, "ok")
    pool = make_pool(llm_server, concurrency=1)
    assert all(pool.submit(request(i)) for i in range(3))
    time.sleep(0.1)
    pool.close()
    replies = {r.request_id: r for r in pool.poll()}
    assert replies["r0"].ok
    assert {replies["r1"].failure, replies["r2"].failure} == {Failure.CANCELLED}
    assert len(llm_server.completions) == 1
    assert pool.spent().requests == 1  # the cancelled ones were never sent
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(request(4))


def test_the_test_server_lists_models(llm_server):
    import json
    import urllib.request

    with urllib.request.urlopen(llm_server.base_url + "/models", timeout=5) as response:
        assert json.load(response)["object"] == "list"
    assert llm_server.requests[-1].path == "/v1/models"


def test_the_key_is_sent_but_never_logged_or_returned(llm_server, caplog):
    caplog.set_level(logging.DEBUG)
    echo = status_reply(401)
    echo = type(echo)(
        status=401,
        body=('{"error": {"message": "Incorrect API key provided: ' + KEY + '"}}').encode(),
    )
    llm_server.script(
        text_reply("fine"),
        echo,
        status_reply(500),
        status_reply(500),
        status_reply(500),
        malformed_reply(),
        slow_reply(2.0),
        status_reply(429, retry_after="0"),
    )
    errors: list[str] = []
    with make_pool(llm_server, retries=2) as pool:
        replies = [only(pool, request(i)) for i in range(6)]
        try:
            pool.close()
            pool.submit(request(7))
        except RuntimeError as exc:
            errors.append(f"{exc!s} {exc!r}")
        texts = [repr(pool), repr(pool.endpoint), repr(pool.spent())]
    assert [r.failure for r in replies] == [
        None,
        Failure.AUTH,
        Failure.SERVER_ERROR,
        Failure.BAD_RESPONSE,
        Failure.TIMEOUT,
        None,
    ]
    assert "***" in replies[1].message  # the endpoint's echo of the key is scrubbed
    auth = {
        r.headers.get("authorization") or r.headers.get("Authorization")
        for r in llm_server.completions
    }
    assert auth == {f"Bearer {KEY}"}
    texts += [repr(r) for r in replies] + [r.message for r in replies] + errors
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(record.args) for record in caplog.records]
    texts += [caplog.text]
    assert caplog.records, "the failure paths log"
    leaks = [t for t in texts if KEY in t]
    assert not leaks


def test_a_process_done_with_its_pool_exits_without_awaiting_a_slow_reply(llm_server):
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    llm_server.script(slow_reply(30))
    code = textwrap.dedent(
        f"""
        import time
        from evolution.llm.port import LlmRequest
        from services.llm.client import LlmPool
        from services.llm.config import make_endpoint
        ep = make_endpoint(base_url={llm_server.base_url!r}, api_key=None, models="m",
                           prices=None, timeout_s=60, retries=0, concurrency=2)
        pool = LlmPool(ep)
        assert pool.submit(LlmRequest("r1", "m", [{{"role": "user", "content": "x"}}]))
        time.sleep(1.0)  # the request is being answered (slowly)
        pool.close(wait=False)
        """
    )
    start = time.monotonic()
    root = Path(__file__).parents[3]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=root)
    assert time.monotonic() - start < 15  # not the 30 s the reply takes
    assert len(llm_server.completions) == 1
