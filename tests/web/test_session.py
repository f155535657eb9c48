"""Signed sessions and login tokens (services.web.session), without a server."""

from __future__ import annotations

import stat

import pytest

from services.web.session import LOGIN_TTL_S, SessionCodec, csrf_ok, load_secret


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_reads_back_until_it_expires():
    clock = Clock()
    codec = SessionCodec(b"s" * 32, ttl_s=60, clock=clock)
    cookie, session = codec.issue(key_id=3, user_id=7)
    assert codec.read(cookie) == session and session.expires_at == 1_000_060
    clock.now += 59
    assert codec.read(cookie) == session
    clock.now += 2
    assert codec.read(cookie) is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),  # signature
        lambda c: "e30" + c[3:],  # body
        lambda c: c.replace(".", ""),
        lambda c: c + ".x",
        lambda c: "",
        lambda c: "x" * 5000,
    ],
)
def test_a_forged_or_malformed_cookie_is_no_session(tamper):
    codec = SessionCodec(b"s" * 32, ttl_s=60)
    cookie, _ = codec.issue(1, 1)
    assert codec.read(tamper(cookie)) is None


def test_another_secret_does_not_read_a_session():
    cookie, _ = SessionCodec(b"a" * 32, ttl_s=60).issue(1, 1)
    assert SessionCodec(b"b" * 32, ttl_s=60).read(cookie) is None


def test_csrf_tokens_are_per_session():
    codec = SessionCodec(b"s" * 32, ttl_s=60)
    _, one = codec.issue(1, 1)
    _, two = codec.issue(1, 1)
    assert csrf_ok(one, one.csrf) and not csrf_ok(one, two.csrf)
    assert not csrf_ok(one, "") and not csrf_ok(one, None)


def test_a_login_token_is_bound_to_its_nonce_and_expires():
    clock = Clock()
    codec = SessionCodec(b"s" * 32, ttl_s=60, clock=clock)
    token = codec.login_token("nonce-1")
    assert codec.login_token_ok("nonce-1", token)
    assert not codec.login_token_ok("nonce-2", token)
    assert not codec.login_token_ok(None, token) and not codec.login_token_ok("nonce-1", None)
    clock.now += LOGIN_TTL_S  # the next period still accepts it
    assert codec.login_token_ok("nonce-1", token)
    clock.now += 2 * LOGIN_TTL_S
    assert not codec.login_token_ok("nonce-1", token)


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        SessionCodec(b"short", ttl_s=60)


def test_the_generated_secret_is_kept_private_and_reused(tmp_path):
    first = load_secret(None, tmp_path)
    assert len(first) >= 32 and load_secret(None, tmp_path) == first
    mode = stat.S_IMODE((tmp_path / "session.key").stat().st_mode)
    assert mode == 0o600
    assert load_secret("configured-secret-value", tmp_path) == b"configured-secret-value"
