"""The ``KERNELMAP_LLM_*`` settings: parsing, checking, the key's fallback, clear errors."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from kernelmap_errors import KernelmapError
from services.config import Settings
from services.llm.config import (
    LlmConfigError,
    ModelWeight,
    Price,
    check_base_url,
    parse_models,
    parse_prices,
)


@pytest.fixture(autouse=True)
def _no_llm_environment(monkeypatch):
    for name in ("OPENAI_API_KEY", "KERNELMAP_LLM_API_KEY", "KERNELMAP_LLM_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("KERNELMAP_LLM_MODELS", raising=False)
    monkeypatch.delenv("KERNELMAP_LLM_PRICES", raising=False)


def test_models_with_and_without_weights_and_ollama_tags():
    assert parse_models(" gpt-4o-mini:3, qwen2.5-coder:32b ,qwen2.5-coder:7b:0.5,o3") == (
        ModelWeight("gpt-4o-mini", 3.0),
        ModelWeight("qwen2.5-coder:32b", 1.0),
        ModelWeight("qwen2.5-coder:7b", 0.5),
        ModelWeight("o3", 1.0),
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("a,,b", "empty entry"),
        ("a,", "empty entry"),
        ("a:0", "positive number"),
        ("a:-1", "positive number"),
        ("a:nan", "positive number"),
        ("a:inf", "positive number"),
        ("two words", "not a model name"),
        ("a;b", "not a model name"),
        ("a,b:2,a", "twice"),
    ],
)
def test_bad_model_lists_say_what_is_wrong(text, says):
    with pytest.raises(LlmConfigError, match=says):
        parse_models(text)


def test_prices_per_million_tokens():
    prices = parse_prices('{"gpt-4o-mini": [0.15, 0.6], "local": [0, 0]}')
    assert prices == {"gpt-4o-mini": Price(0.15, 0.6), "local": Price(0.0, 0.0)}
    assert prices["gpt-4o-mini"].cost(1_000_000, 500_000) == pytest.approx(0.45)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"m": [1]}', "two"),
        ('{"m": [-1, 2]}', "non-negative"),
        ('{"m": ["1", 2]}', "non-negative"),
        ('{"m": [true, 2]}', "non-negative"),
        ('{"m": {"in": 1}}', "two"),
    ],
)
def test_bad_prices_say_what_is_wrong(text, says):
    with pytest.raises(LlmConfigError, match=says):
        parse_prices(text)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost:8000/v1", "not an http"),
        ("ftp://host/v1", "not an http"),
        ("http:///v1", "not an http"),
        ("https://user:secret@host/v1", "credentials"),
        ("https://host/v1?key=secret", "credentials"),
    ],
)
def test_bad_base_urls_are_refused(url, says):
    with pytest.raises(LlmConfigError, match=says):
        check_base_url(url)


def test_base_url_loses_its_trailing_slash():
    assert check_base_url(" http://127.0.0.1:8000/v1/ ") == "http://127.0.0.1:8000/v1"


def test_the_errors_are_user_errors():
    assert issubclass(LlmConfigError, KernelmapError)


def test_settings_describe_the_endpoint(monkeypatch):
    monkeypatch.setenv("KERNELMAP_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("KERNELMAP_LLM_MODELS", "a:2,b")
    monkeypatch.setenv("KERNELMAP_LLM_PRICES", '{"a": [1, 2]}')
    monkeypatch.setenv("KERNELMAP_LLM_TIMEOUT_S", "30")
    monkeypatch.setenv("KERNELMAP_LLM_RETRIES", "1")
    monkeypatch.setenv("KERNELMAP_LLM_CONCURRENCY", "8")
    endpoint = Settings().llm_endpoint()
    assert endpoint.base_url == "http://127.0.0.1:9/v1"
    assert endpoint.models == (ModelWeight("a", 2.0), ModelWeight("b", 1.0))
    assert endpoint.price("a") == Price(1.0, 2.0) and endpoint.price("b") is None
    assert (endpoint.timeout_s, endpoint.retries, endpoint.concurrency) == (30.0, 1, 8)
    assert endpoint.api_key is None


def test_defaults():
    s = Settings()
    assert s.llm_base_url is None
    assert (s.llm_timeout_s, s.llm_retries, s.llm_concurrency) == (120.0, 3, 4)


def test_without_a_base_url_llm_search_is_unavailable():
    with pytest.raises(LlmConfigError, match="KERNELMAP_LLM_BASE_URL"):
        Settings(llm_models="a").llm_endpoint()


def test_without_models_the_error_says_so():
    with pytest.raises(LlmConfigError, match="KERNELMAP_LLM_MODELS is empty"):
        Settings(llm_base_url="http://h/v1").llm_endpoint()


def test_a_bad_llm_setting_breaks_only_llm_search(monkeypatch):
    monkeypatch.setenv("KERNELMAP_LLM_MODELS", "a:zero:-3")
    settings = Settings(llm_base_url="http://h/v1")  # other commands still start
    with pytest.raises(LlmConfigError, match="positive number"):
        settings.llm_endpoint()


def test_the_key_falls_back_to_openai_api_key(monkeypatch):
    assert Settings().llm_key() is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-openai-env")
    assert Settings().llm_key().get_secret_value() == "sk-from-openai-env"
    monkeypatch.setenv("KERNELMAP_LLM_API_KEY", "sk-from-kernelmap-env")
    assert Settings().llm_key().get_secret_value() == "sk-from-kernelmap-env"


def test_the_key_is_masked_in_reprs(monkeypatch):
    monkeypatch.setenv("KERNELMAP_LLM_API_KEY", "sk-very-secret-123")
    settings = Settings(llm_base_url="http://h/v1", llm_models="m")
    endpoint = settings.llm_endpoint()
    assert endpoint.api_key == SecretStr("sk-very-secret-123")
    for text in (repr(settings), str(settings), repr(endpoint), str(endpoint)):
        assert "sk-very-secret-123" not in text
