"""The gate's rules reach the prompt in plain words, read from the rules' own data."""

from __future__ import annotations

from evaluator_worker import gate_rules
from evolution.llm.contract import CANDIDATE_CONTRACT, gate_rules_text, undescribed_rules


def test_every_gate_reason_has_a_description():
    # A WHY_* rule the walker checks by itself needs a wording in contract.CONSTRUCTS.
    assert undescribed_rules() == []


def test_every_reason_of_the_rules_is_in_the_text():
    text = gate_rules_text()
    whys = [v for k, v in vars(gate_rules).items() if k.startswith("WHY_")]
    tables = [
        *gate_rules.BANNED_NAMES.values(),
        *gate_rules.BANNED_PREFIXES.values(),
        *gate_rules.BANNED_BUILTINS.values(),
        *(n for n in gate_rules.BANNED_MODULES.values() if n),
    ]
    missing = [why for why in {*whys, *tables} if why not in text]
    assert not missing


def test_names_are_shown_up_to_the_example_count():
    full = gate_rules_text(examples=1000)
    assert "import pickle" in full and "torch.cuda.graph" in full
    short = gate_rules_text(examples=2)
    assert "more:" in short and len(short) < len(full)


def test_the_contract_names_model_new_and_search_space():
    assert "class ModelNew(nn.Module)" in CANDIDATE_CONTRACT
    assert "SEARCH_SPACE" in CANDIDATE_CONTRACT
