"""The search loop's values as the archive stores them, and back.

A :class:`~evolution.candidate.CandidateSpec` is stored as a candidate under its duplicate-detection
keys (:func:`candidate_keys`) and read back with :func:`spec_of`; an evaluator result dict is
stored as an evaluation whose columns :func:`evaluation_values` picks out of it (non-finite
numbers become NULL). Used by :mod:`archive.run_store` and by benchmarks that fill a database.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from typing import Any

from archive import models as m
from evolution.candidate import CandidateSpec, normalise_source, outcome_from_result


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None for None, NaN and infinities (stored as NULL)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@functools.lru_cache(maxsize=256)
def _normalised_sha256(source: str) -> Any:
    # Normalising parses and unparses the source (milliseconds for a real kernel file), and a
    # parameter family proposes one source thousands of times: once per source is enough.
    return hashlib.sha256(normalise_source(source).encode())


def candidate_keys(spec: CandidateSpec) -> tuple[str, str]:
    """``(key_sha256, source_sha256)`` of a spec, as stored on its candidate.

    ``key_sha256`` is :attr:`CandidateSpec.key` (:func:`evolution.candidate.candidate_key`),
    computed from a cached normalisation of the source; ``source_sha256`` is the sha256 of
    the normalised source.
    """
    source_hash = _normalised_sha256(spec.source)
    key = source_hash.copy()
    key.update(b"\0" + json.dumps(spec.params, sort_keys=True, default=str).encode())
    return key.hexdigest(), source_hash.hexdigest()


def spec_of(candidate: m.Candidate) -> CandidateSpec:
    """The :class:`CandidateSpec` a stored candidate was proposed as."""
    return CandidateSpec(
        source=candidate.source,
        params=dict(candidate.params),
        emitter=candidate.emitter,
        parent_ids=tuple(candidate.parent_ids),
        label=candidate.label,
        genome=tuple(candidate.genome) if candidate.genome is not None else None,
    )


def evaluation_values(
    candidate_id: int, result: dict[str, Any], job_id: str | None = None
) -> dict[str, Any]:
    """The column values of an :class:`~archive.models.Evaluation` of an evaluator result."""
    outcome = outcome_from_result(candidate_id, result)
    objective = finite_or_none(outcome.objective)
    return {
        "candidate_id": candidate_id,
        "job_id": job_id,
        "verdict": outcome.verdict,
        "correct": bool(result.get("correct", False)),
        "objective": objective,
        "objective_label": outcome.objective_label if objective is not None else None,
        "speedup_vs_eager": finite_or_none(result.get("speedup_vs_eager")),
        "speedup_vs_compile": finite_or_none(result.get("speedup_vs_compile")),
        "messages": list(result.get("messages") or []),
        "timing": result.get("timing"),
        "features": dict(result.get("features") or {}),
        "hardware": dict(result.get("hardware") or {}),
        "params": dict(result.get("params") or {}),
        "worker": result.get("worker"),
        "duration_s": finite_or_none((result.get("stages_s") or {}).get("total_s")),
        "result": result,
    }


def evaluation_row(
    candidate_id: int, result: dict[str, Any], job_id: str | None = None
) -> m.Evaluation:
    """An :class:`~archive.models.Evaluation` filled from an evaluator result dict."""
    return m.Evaluation(**evaluation_values(candidate_id, result, job_id))
