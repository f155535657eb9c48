"""LLM search's set-up in a run: options checked against the server, caps left after a resume,
the hardware facts of the prompts, the store that remembers specs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from archive.llm_log import LlmSpent
from evolution.candidate import CandidateSpec
from evolution.fakes import MemoryStore
from services.config import Settings
from services.llm.config import LlmConfigError
from services.runs.llm_setup import (
    LlmOptions,
    SpecMemo,
    _caps,
    cli_options,
    hardware_facts,
    llm_options,
)


def _settings(**kw) -> Settings:
    base = {
        "llm_base_url": "http://127.0.0.1:8000/v1",
        "llm_models": "coder:3,small",
        "llm_prices": json.dumps({"coder": [1.0, 2.0]}),
        "llm_max_requests": 40,
        "llm_max_total_tokens": 100_000,
    }
    return Settings(**{**base, **kw})


def test_models_keep_the_servers_weight_unless_given_one():
    options = llm_options(_settings(), ["coder", "small:0.25"])
    assert options.models == (("coder", 3.0), ("small", 0.25))
    assert llm_options(_settings()).models == (("coder", 3.0), ("small", 1.0))
    assert LlmOptions.from_json(json.loads(json.dumps(options.to_json()))) == options


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"models": ["gpt-5"]}, "'gpt-5' not offered by this server; choose among coder, small"),
        ({"max_requests": 41}, "--llm max_requests 41 is above this server's cap of 40"),
        ({"max_total_tokens": 10**6}, "above this server's cap of 100000"),
        ({"max_tokens": 0}, "max_tokens must be between 1 and 65536"),
        ({"max_cost": 2.0}, "a cost cap needs a price for every model; small has none"),
        ({"max_requests": -1}, "must be positive"),
    ],
)
def test_options_the_server_cannot_honour_are_refused_saying_which(kw, says):
    models = kw.pop("models", None)
    with pytest.raises(LlmConfigError) as err:
        llm_options(_settings(), models, **kw)
    assert says in str(err.value)


def test_a_server_cost_cap_needs_prices_for_the_models_a_run_uses():
    settings = _settings(llm_max_cost=5.0)
    assert llm_options(settings, ["coder"]).max_cost is None  # the server's cap applies
    with pytest.raises(LlmConfigError, match="small has none"):
        llm_options(settings, ["small"])


def test_cli_flags_without_llm_are_refused_and_none_without_any():
    opts = SimpleNamespace(
        llm=False,
        llm_models=[],
        llm_max_tokens=None,
        llm_max_requests=5,
        llm_max_total_tokens=None,
        llm_max_cost=None,
    )
    with pytest.raises(ValueError, match="need --llm"):
        cli_options(_settings(), opts)
    opts.llm_max_requests = None
    assert cli_options(_settings(), opts) is None
    opts.llm, opts.llm_max_requests = True, 5
    assert cli_options(_settings(), opts)["max_requests"] == 5


def test_a_resumed_run_gets_the_caps_its_earlier_searches_left():
    spent = LlmSpent(requests=30, prompt_tokens=50_000, completion_tokens=20_000, cost=1.5,
                     lost_tokens=10_000)  # fmt: skip
    log = SimpleNamespace(spent=lambda: spent)
    caps = _caps(LlmOptions((("coder", 1.0),), max_cost=2.0), _settings(), log)
    assert (caps.max_requests, caps.max_tokens, caps.max_cost) == (10, 20_000, 0.5)
    caps = _caps(LlmOptions((("coder", 1.0),), max_requests=20), _settings(), log)
    assert caps.max_requests == 0 and caps.max_cost is None  # spent past the run's own cap


def test_hardware_facts_name_the_gpus_datasheet_peaks_when_the_class_names_a_gpu():
    h200 = hardware_facts("h200", "cuda")
    assert h200["memory bandwidth (datasheet)"] == "4.8 TB/s"
    assert "fp16/bf16 989" in h200["dense TFLOP/s (datasheet)"]
    assert set(hardware_facts("cuda", "cuda")) == {"hardware class", "device"}
    assert "interpreter" in hardware_facts("cpu", "cpu")["device"]


def test_the_spec_memo_remembers_what_was_proposed_and_read_back():
    store = SpecMemo(MemoryStore())
    spec = CandidateSpec("class ModelNew: pass\n", {}, "llm", (), "llm:coder/target")
    cid = store.propose_many([spec])[0].candidate_id
    assert store.specs[cid] is spec and store.pending() == [(cid, spec)]
    assert store.evaluated() == []  # the rest goes to the store
