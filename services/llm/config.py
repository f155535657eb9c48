"""The LLM endpoint's configuration: parsing and checking the ``KERNELMAP_LLM_*`` settings.

Pure: strings in, frozen dataclasses out, :class:`LlmConfigError` (a user error) for anything
malformed. :meth:`services.config.Settings.llm_endpoint` calls :func:`make_endpoint`, lazily, so a
bad LLM setting stops only what uses the model, never ``kernelmap eval``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic import SecretStr

from kernelmap_errors import KernelmapError

#: What a model name may hold: what vLLM, Ollama (``qwen2.5-coder:32b`` is written with its weight
#: separated by the *last* colon) and hosted APIs use, and nothing that could be a list separator.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@:+-]*$")


class LlmConfigError(KernelmapError):
    """A ``KERNELMAP_LLM_*`` setting is missing or malformed; the message says which and how."""


@dataclass(frozen=True)
class ModelWeight:
    """One model of the ensemble and its share of the requests (weights need not sum to 1)."""

    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class Price:
    """What a model costs, in the currency of the cost cap, per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The cost of one request that used these many tokens."""
        return (
            prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok
        ) / 1e6


@dataclass(frozen=True)
class LlmEndpoint:
    """Everything the HTTP client needs to talk to one OpenAI-compatible endpoint.

    ``api_key`` is a :class:`~pydantic.SecretStr`: its repr, and so this dataclass's, masks it;
    only the client reads its value, when it builds its ``Authorization`` header.
    """

    base_url: str
    api_key: SecretStr | None = field(default=None, repr=False)
    models: tuple[ModelWeight, ...] = ()
    prices: Mapping[str, Price] = field(default_factory=dict)
    timeout_s: float = 120.0
    retries: int = 3
    concurrency: int = 4

    def price(self, model: str) -> Price | None:
        """The price of ``model``, or None where none is configured."""
        return self.prices.get(model)


def parse_models(text: str) -> tuple[ModelWeight, ...]:
    """Parse ``name[:weight],...`` (``KERNELMAP_LLM_MODELS``) into models and their weights.

    A weight is what follows the last colon when it is a number, so Ollama's ``name:tag`` names
    stay whole: ``qwen2.5-coder:32b`` is one name of weight 1, ``qwen2.5-coder:32b:2`` has
    weight 2.

    Raises
    ------
    LlmConfigError
        An empty entry, a bad name, a weight that is not a positive finite number, a duplicate.
    """
    models: list[ModelWeight] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            raise LlmConfigError(
                f"KERNELMAP_LLM_MODELS={text!r} has an empty entry; write name[:weight],..."
                " e.g. 'gpt-4o-mini:3,qwen2.5-coder:32b:1'"
            )
        name, weight = entry, 1.0
        head, sep, tail = entry.rpartition(":")
        if sep and _is_number(tail):
            name, weight = head, float(tail)
            if not (math.isfinite(weight) and weight > 0):
                raise LlmConfigError(
                    f"KERNELMAP_LLM_MODELS: the weight of {name!r} is {tail}; give a positive"
                    " number (a model's share of the requests)"
                )
        if not _MODEL_NAME.match(name):
            raise LlmConfigError(
                f"KERNELMAP_LLM_MODELS: {name!r} is not a model name (letters, digits and"
                " ._/@:+- only)"
            )
        if any(m.name == name for m in models):
            raise LlmConfigError(f"KERNELMAP_LLM_MODELS names {name!r} twice; name it once")
        models.append(ModelWeight(name, weight))
    return tuple(models)


def parse_prices(text: str) -> dict[str, Price]:
    """Parse ``KERNELMAP_LLM_PRICES``: JSON ``{"model": [input_per_mtok, output_per_mtok]}``.

    Raises
    ------
    LlmConfigError
        Not JSON, not an object, or a price that is not two non-negative numbers.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LlmConfigError(
            f"KERNELMAP_LLM_PRICES is not JSON ({exc.msg}); write"
            ' {"model": [input_per_mtok, output_per_mtok], ...}'
        ) from None
    if not isinstance(data, dict):
        raise LlmConfigError(
            "KERNELMAP_LLM_PRICES must be a JSON object"
            ' {"model": [input_per_mtok, output_per_mtok], ...}'
        )
    prices: dict[str, Price] = {}
    for model, pair in data.items():
        if not isinstance(pair, list) or len(pair) != 2 or not all(_non_negative(x) for x in pair):
            raise LlmConfigError(
                f"KERNELMAP_LLM_PRICES: the price of {model!r} is {pair!r}; give two"
                " non-negative numbers [input_per_mtok, output_per_mtok]"
            )
        prices[model] = Price(float(pair[0]), float(pair[1]))
    return prices


def check_base_url(url: str) -> str:
    """Check ``KERNELMAP_LLM_BASE_URL`` is an http(s) URL with a host; return it without a
    trailing slash.

    Raises
    ------
    LlmConfigError
        Another scheme, no host, or credentials in the URL (put the key in
        ``KERNELMAP_LLM_API_KEY``, never in a URL that may be logged).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LlmConfigError(
            f"KERNELMAP_LLM_BASE_URL={url!r} is not an http(s) URL; give the endpoint's /v1 URL,"
            " e.g. http://localhost:8000/v1 (vLLM) or https://api.openai.com/v1"
        )
    if parts.username or parts.password or parts.query:
        raise LlmConfigError(
            "KERNELMAP_LLM_BASE_URL must not carry credentials or a query; put the key in"
            " KERNELMAP_LLM_API_KEY"
        )
    return url.strip().rstrip("/")


def make_endpoint(
    *,
    base_url: str | None,
    api_key: SecretStr | None,
    models: str,
    prices: str | None,
    timeout_s: float,
    retries: int,
    concurrency: int,
) -> LlmEndpoint:
    """The endpoint the settings describe, checked.

    Raises
    ------
    LlmConfigError
        No base URL (LLM search is unavailable), no model, or any malformed setting.
    """
    if not base_url:
        raise LlmConfigError(
            "LLM search needs an OpenAI-compatible endpoint: set KERNELMAP_LLM_BASE_URL"
            " (e.g. http://localhost:8000/v1) and KERNELMAP_LLM_MODELS"
        )
    if not models.strip():
        raise LlmConfigError(
            "KERNELMAP_LLM_MODELS is empty; name the models to use, e.g. 'gpt-4o-mini:3,o3:1'"
        )
    return LlmEndpoint(
        base_url=check_base_url(base_url),
        api_key=api_key,
        models=parse_models(models),
        prices=parse_prices(prices) if prices else {},
        timeout_s=timeout_s,
        retries=retries,
        concurrency=concurrency,
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _non_negative(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0
