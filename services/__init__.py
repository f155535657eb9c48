"""services: everything around the search core and the judge that a user or an operator runs.

Rooms
-----
``cli/``
    The ``kernelmap`` command line: the parser and one module per command group.
``runs/``
    A run from its task to its archive: seeds, template matching, the run configuration, the
    wiring of the search loop to the database and a dispatcher, the API's controller, and
    reading a run back (tables, the HTML report, exports).
``dispatch/``
    How a job reaches an evaluator and its result comes back: the local pool, the Celery queue,
    remote workers' leases, and the fleet dispatcher choosing between the last two. Its
    docstring is the route map from a proposal to a GPU and back.
``workers/``
    The processes that evaluate: the Celery app and task, heartbeats and hardware facts in
    Redis, the remote worker that joins over HTTPS.
``broker/``
    The embedded Redis that ``kernelmap serve`` starts when none is configured.
``api/``
    The REST API (FastAPI), everything under ``/api/v1``.
``web/``
    The dashboard the same app serves at ``/``: sign-in with an API key, runs, their maps,
    candidates, lineage and the fleet, as server-rendered pages.
``llm/``
    The adapter to OpenAI-compatible model endpoints for LLM search: the ``KERNELMAP_LLM_*``
    settings checked, and a pool of chat-completion requests (submit now, poll later) with
    retries, timeouts, a concurrency limit and hard caps on requests, tokens and cost.

Modules
-------
``config``
    :class:`Settings`, the one settings object, read from ``KERNELMAP_*`` variables.
``keys``
    API keys: making, checking and revoking them (hashing: :mod:`archive.credentials`).
``heap``
    The cycle collector tuned for a long-lived process, once: the start-up heap (torch,
    pyribs...) frozen out of its full passes, the young generation collected less often.

The whole picture (components, one evaluation's path, trust boundaries, modes) is in
docs/architecture.md.
"""
