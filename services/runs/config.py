"""A run's stored configuration and objective label: one definition for the CLI and the API.

The configuration is what a controller needs to start or resume a run: the seeds (sources and
search spaces), the descriptor dimensions, the archive kind, the parameter emitters' variation,
the hardware class and the evaluation timeout. It is stored as JSON in ``runs.config``
(:meth:`RunConfig.to_json`) and read back with :meth:`RunConfig.from_json`; every default is
the field's default here, never repeated where the configuration is read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from evaluator_worker import static_gate
from evolution.descriptors import default_dims
from evolution.emitters import VARIATIONS as VARIATIONS  # re-exported: named with the emitters
from services.runs.seeds import Seed

#: The map's kinds: a ``grid`` over the descriptor bins, or ``cvt`` (``cells`` centroids).
ARCHIVES = ("grid", "cvt")


def objective_label(device: str, seeds: list[Seed]) -> str:
    """``gpu-speedup`` on CUDA; on the CPU ``cpu-interpreter`` when any seed uses Triton (its
    interpreted time is not performance), else ``cpu-time``."""
    if device == "cuda":
        return "gpu-speedup"
    uses_triton = any(static_gate.check_source(s.source).uses_triton for s in seeds)
    return "cpu-interpreter" if uses_triton else "cpu-time"


@dataclasses.dataclass
class RunConfig:
    """The configuration stored with a run (``runs.config``).

    Reading what earlier versions stored: a key that is missing, or stored as null, gets the
    field's default. Keys this version does not know are kept, in :attr:`extra`, and written
    back by :meth:`to_json`: a configuration read and stored again (the controller adds the
    template seeds) loses nothing a newer version put there.

    Attributes
    ----------
    device:
        The run's hardware class (``cpu``, ``cuda``, ``h100``...); the run row's ``device``
        column says the same. None only where a configuration stored none (tests).
    dims:
        The descriptor dimensions, ``NAME[:BINS],...`` (:func:`evolution.descriptors.parse_dims`).
        Every writer stores them (:meth:`new` fills in the device's defaults); None where a
        configuration has none, which the search refuses and the API shows as null.
    seeds:
        The seed candidates, the task's reference first; template seeds are appended once
        matched (see ``templates_added``).
    timeout_s:
        Bound on each stage of an evaluation in seconds; None: the settings' ``timeout_s``.
    workers:
        Jobs in flight at once (local evaluation processes for ``kernelmap run``); at least 1.
    variation:
        How parameter emitters vary, one of :data:`evolution.emitters.VARIATIONS`.
    archive:
        One of :data:`ARCHIVES`.
    cells:
        The CVT map's cells (``kernelmap run`` requires at least 2 with ``archive="cvt"``);
        unused by a grid.
    templates:
        Whether the template library's seeds are wanted.
    templates_added:
        Whether they have been matched and appended to ``seeds`` (``kernelmap run`` does so at
        creation, the controller when it first starts an API run).
    template_notes:
        What the template matcher said (at most 20 notes), for the API's run.
    emitters:
        The API request's ``emitters`` as given (None for a CLI run).
    llm:
        The run's LLM search (``services.runs.llm_setup.LlmOptions.to_json``); None: none.
    extra:
        Keys this version does not know, kept as they were stored.
    """

    device: str | None = None
    dims: str | None = None
    seeds: list[Seed] = dataclasses.field(default_factory=list)
    timeout_s: float | None = None
    workers: int = 1
    variation: str = "gaussian"
    archive: str = "grid"
    cells: int | None = None
    templates: bool = True
    templates_added: bool = False
    template_notes: list[str] = dataclasses.field(default_factory=list)
    emitters: list[str] | None = None
    llm: dict[str, Any] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def new(
        cls,
        *,
        device: str,
        seeds: list[Seed],
        timeout_s: float,
        dims: str | None = None,
        **options: Any,
    ) -> RunConfig:
        """A new run's configuration; ``dims`` defaults per device, ``options`` are further
        fields (``workers``, ``variation``, ``archive``, ``cells``, ``templates``...)."""
        return cls(
            device=device,
            dims=dims or ",".join(default_dims(device, [s.space for s in seeds])),
            seeds=list(seeds),
            timeout_s=timeout_s,
            **options,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in ``runs.config`` (seeds as :meth:`Seed.to_dict`)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["seeds"] = [s.to_dict() for s in self.seeds]
        out["template_notes"] = list(self.template_notes)
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> RunConfig:
        """Read a stored configuration, this version's or an earlier one's (see the class)."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        if "seeds" in values:
            values["seeds"] = [Seed.from_dict(d) for d in values["seeds"]]
        if "workers" in values:
            values["workers"] = int(values["workers"]) or 1
        if "template_notes" in values:
            values["template_notes"] = list(values["template_notes"])
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra)
