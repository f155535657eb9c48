"""The service's one settings object, read from ``KERNELMAP_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from evaluator_worker.config import EvalConfig
from services.llm.config import LlmEndpoint, make_endpoint


class Settings(BaseSettings):
    """Settings of kernelmap; each field is ``KERNELMAP_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="KERNELMAP_", extra="ignore")

    data_dir: Path = Field(
        default=Path.home() / ".kernelmap", description="Where kernelmap keeps its data"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    timeout_s: float = Field(default=60.0, gt=0, description="Bound on each stage of a candidate")
    trials: int = Field(default=5, ge=5)
    samples: int = Field(default=100, ge=100)
    interpreter_samples: int = Field(
        default=20,
        ge=5,
        description="Timed samples of a Triton candidate in the CPU interpreter (searches on"
        " a machine without a GPU; interpreted time is reported apart, never as a speedup)",
    )
    compile_baseline: Literal["auto", "always", "never"] = "auto"
    memory_limit_mb: int = Field(default=16384, gt=0)
    sandbox: Literal["strict", "relaxed"] = Field(
        default="strict",
        description="strict: refuse untrusted code where the sandbox cannot be set up;"
        " relaxed: run it with what the host allows and say what was missing",
    )
    pass_env: list[str] = Field(
        default_factory=list,
        description="Names of further environment variables sandboxed children get (JSON list;"
        " the benchmarks' size knobs). Everything outside the sandbox's allow-list is dropped:"
        " never name a secret here",
    )
    sandbox_read_only: list[str] = Field(
        default_factory=list,
        description="Further host paths sandboxed children see read-only (JSON list), e.g. a"
        " CUDA installation outside /usr",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite in the data directory"
    )

    redis_url: str | None = Field(
        default=None,
        description="Redis broker of the evaluation fleet (redis://HOST:PORT/DB); when set,"
        " `kernelmap run` dispatches through Celery to workers started by `kernelmap worker`",
    )
    redis_key_prefix: str = Field(
        default="",
        description="Prefix of every Redis key kernelmap's queues use (kombu's global_keyprefix):"
        " separates deployments (or test runs) sharing one Redis server",
    )
    visibility_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds before a job taken by a worker that died is delivered again;"
        " default: longer than the longest evaluation (see services.workers.celery_app)",
    )
    heartbeat_s: float = Field(
        default=10.0,
        gt=0,
        lt=86400,
        description="Seconds between two heartbeats of a `kernelmap worker` in Redis; its record"
        " expires after three (see services.workers.fleet)",
    )

    max_active_runs: int = Field(
        default=16, ge=1, description="Runs one controller searches at once, all users together"
    )
    controller_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$",
        description="This controller's name among those sharing the database (`kernelmap"
        " controller --id`); default: <host>:<pid>",
    )
    lease_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="Seconds a controller's lease on a run lasts unless renewed (every third of"
        " it); a standby takes the runs of a controller that died after this long",
    )
    max_runs_per_user: int = Field(
        default=2,
        ge=1,
        description="Runs of one user searched at once; the user's further runs wait queued",
    )
    run_jobs_in_flight: int = Field(
        default=4, ge=1, description="Evaluation jobs the controller keeps in flight per run"
    )
    worker_token: SecretStr | None = Field(
        default=None,
        description="The enrolment token of `kernelmap worker --join` (a worker-role key), kept"
        " out of `ps`; `--token-file` or `--token` win over it",
    )

    session_secret: SecretStr | None = Field(
        default=None,
        description="Signs the dashboard's session cookies; unset, a random one is kept in"
        " the data directory (set the same value on every API replica)",
    )
    session_ttl_s: int = Field(
        default=8 * 3600, ge=60, description="How long a dashboard sign-in lasts (seconds)"
    )
    secure_cookies: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="The session cookie's Secure flag: auto sets it on HTTPS requests"
        " (behind a proxy, start uvicorn with --proxy-headers)",
    )

    llm_base_url: str | None = Field(
        default=None,
        description="An OpenAI-compatible endpoint's /v1 URL (vLLM, Ollama, llama.cpp, OpenAI);"
        " unset: LLM search is unavailable",
    )
    llm_api_key: SecretStr | None = Field(
        default=None,
        description="The endpoint's API key; unset: OPENAI_API_KEY, else none (local servers)."
        " Never logged, stored or returned",
    )
    llm_models: str = Field(
        default="",
        description="The models LLM search may ask, name[:weight],... (e.g."
        " 'gpt-4o-mini:3,qwen2.5-coder:32b:1'); checked when LLM search starts",
    )
    llm_prices: str | None = Field(
        default=None,
        description='Prices per model for cost caps, JSON {"model": [input_per_mtok,'
        " output_per_mtok]}; without one a model's cost is unknown",
    )
    llm_timeout_s: float = Field(default=120.0, gt=0, description="Bound on each LLM request")
    llm_retries: int = Field(
        default=3, ge=0, le=10, description="Retries of a request on 408, 429, 5xx"
    )
    llm_concurrency: int = Field(
        default=4, ge=1, le=64, description="LLM requests in flight at once, per run"
    )

    llm_max_requests: int = Field(
        default=200, ge=1, description="Most LLM requests one run may send (a hard cap)"
    )
    llm_max_total_tokens: int = Field(
        default=2_000_000,
        ge=1,
        description="Most prompt plus completion tokens one run may spend on its model (a hard"
        " cap; requests in flight count with their worst case)",
    )
    llm_max_cost: float | None = Field(
        default=None,
        gt=0,
        description="Most one run may spend on its model, in the unit of KERNELMAP_LLM_PRICES"
        " (needs a price for every model); unset: no cost cap",
    )

    def llm_key(self) -> SecretStr | None:
        """The LLM endpoint's key: ``KERNELMAP_LLM_API_KEY``, else ``OPENAI_API_KEY``, else None."""
        if self.llm_api_key is not None and self.llm_api_key.get_secret_value():
            return self.llm_api_key
        fallback = os.environ.get("OPENAI_API_KEY")
        return SecretStr(fallback) if fallback else None

    def llm_endpoint(self) -> LlmEndpoint:
        """The LLM endpoint these settings describe, checked here rather than at startup so that
        a bad LLM setting stops only LLM search.

        Raises
        ------
        services.llm.config.LlmConfigError
            No base URL or no model, or a malformed ``KERNELMAP_LLM_*`` setting.
        """
        return make_endpoint(
            base_url=self.llm_base_url,
            api_key=self.llm_key(),
            models=self.llm_models,
            prices=self.llm_prices,
            timeout_s=self.llm_timeout_s,
            retries=self.llm_retries,
            concurrency=self.llm_concurrency,
        )

    def eval_config(self, **overrides: Any) -> EvalConfig:
        """The evaluator's configuration, with command-line ``overrides`` applied."""
        base = {
            "device": self.device,
            "timeout_s": self.timeout_s,
            "trials": self.trials,
            "samples": self.samples,
            "interpreter_samples": self.interpreter_samples,
            "compile_baseline": self.compile_baseline,
            "memory_limit_mb": self.memory_limit_mb,
            "sandbox": self.sandbox,
            "pass_env": tuple(self.pass_env),
            "sandbox_read_only": tuple(self.sandbox_read_only),
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return EvalConfig(**base)
