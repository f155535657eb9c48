"""evolution: the search core (docs/architecture.md, "Search core").

Pure: plain dataclasses in and out, the outside world reached only through the protocols of
``ports``. Nothing here imports FastAPI, Celery, Redis, SQLAlchemy or an HTTP client; a unit
test of the search needs no database and no GPU. This file imports nothing.

Modules
-------
The loop and its parts

``loop``
    :class:`~loop.SearchLoop`, one run's steady-state loop: ask emitters, dispatch, ingest
    results as they arrive, resume from the store; its rules (budget, duplicates, batching,
    stop) are in its docstring. Re-exports ``Progress``, ``Summary``, ``Best`` and ``STOP_*``.
``verification``
    Where a remote worker's result is re-verified: its timing is a claim that enters the map
    only as a trusted worker re-measured it (:func:`~verification.needs_verification`,
    :class:`~verification.Verifier`).
``ties``
    :class:`~ties.Ties`: the one re-measure of a challenger that is faster than the elite but
    within noise, settled by :meth:`~grid.MapArchive.resolve_tie`.
``jobs``
    :class:`~jobs.Jobs`: one session's jobs, queued, in flight and ingested (a result
    delivered twice is learned once).
``progress``
    What the loop reports: :class:`~progress.Progress`, progress points for the store on a
    cadence, the :class:`~progress.Summary` of how a run ended and its ``STOP_*`` reasons.

The map and what goes in it

``grid``
    :class:`~grid.MapArchive`, the map of elites (a pyribs archive of candidate ids) with
    noise-aware replacement: ``consider -> Decision -> commit``.
``descriptors``
    The map's dimensions, computed from an outcome's features or params
    (:func:`~descriptors.parse_dims`, :func:`~descriptors.default_dims`).
``candidate``
    :class:`~candidate.CandidateSpec` (what the search proposes; its duplicate key) and
    :class:`~candidate.Outcome` (what it learns back, from an evaluator result).
``canonical``
    The canonical form of a source (its syntax tree written out, layout and comments gone):
    what the duplicate key hashes.

Where candidates come from

``emitters``
    The :class:`~emitters.Emitter` extension point and its kinds (seeds, parameter search,
    CMA-ME), and ``VARIATIONS``, the names of the parameter emitters' variation operators.
``templates``
    The template library: parametric kernels instantiated for a task without an LLM.
``llm``
    The pure core of LLM-driven search: prompts, reply edits, the model/operator bandit and
    the evolving prompt strategies.

The edges

``ports``
    The protocols the loop reaches the world through (:class:`~ports.Dispatcher`,
    :class:`~ports.Store`) and the plain records they carry (``Job``, ``JobResult``,
    ``Proposal``, ``EliteChange``, ``RunStats``; the ``UNVERIFIED`` result key).
``fakes``
    In-memory stand-ins for the ports (``MemoryStore``, ``FakeDispatcher``, ``fake_result``),
    for tests and the overhead benchmark.
"""
