"""``kernelmap run``: wires the search core to the database and a dispatcher.

The controller (this process) owns the run's pyribs archive; a
:class:`services.dispatch.local.LocalPool` of evaluator processes evaluates (with a Redis
broker: the Celery fleet, through :class:`services.dispatch.celery_queue.CeleryDispatcher`;
the parts are built by :mod:`services.runs.wiring`); :class:`archive.run_store.RunStore`
persists every proposal, job, evaluation, elite change and progress point as it happens, so a
killed run loses at most the evaluations in flight and ``--resume`` continues it.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from archive import db, repository, run_control
from archive.run_leases import LeaseLost
from archive.run_store import RunStore
from archive.status import RunStatus
from evaluator_worker.device import device_of_class, resolve_device
from evaluator_worker.errors import TaskError
from evolution.descriptors import default_dims, parse_dims
from evolution.loop import Progress, SearchLoop
from kernelmap_errors import KernelmapError
from services.config import Settings
from services.runs import llm_setup, wiring
from services.runs.config import ARCHIVES, VARIATIONS, RunConfig, objective_label
from services.runs.ownership import RunOwnership, default_owner
from services.runs.seeds import Seed, load_seed, reference_seed
from services.runs.task_validation import validate_source
from services.runs.template_probe import template_seeds

#: A run in one of these can be continued with ``kernelmap run --resume``.
RESUMABLE = {RunStatus.RUNNING, RunStatus.INTERRUPTED, RunStatus.QUEUED, RunStatus.FAILED}

#: The ``status`` of a search's summary when another owner took its run (the run's own status
#: is then the new owner's to write).
LOST = "lost"


class RunError(KernelmapError):
    """A run cannot be started or resumed (unknown id, finished run, bad options)."""


def print_note(text: str) -> None:
    """Where a run's notes go by default: stderr (stdout may carry JSON)."""
    print(text, file=sys.stderr, flush=True)


@dataclasses.dataclass
class RunOptions:
    """What ``kernelmap run`` was asked to do."""

    task: Path | None = None
    seeds: list[Path] = dataclasses.field(default_factory=list)
    budget: int = 30
    device: str | None = None
    workers: int | None = None
    db_url: str | None = None
    dims: str | None = None
    resume: int | None = None
    templates: bool = True
    archive: str = "grid"
    variation: str = "gaussian"
    cells: int | None = None
    redis_url: str | None = None
    llm: bool = False
    llm_models: list[str] = dataclasses.field(default_factory=list)
    llm_max_tokens: int | None = None
    llm_max_requests: int | None = None
    llm_max_total_tokens: int | None = None
    llm_max_cost: float | None = None
    notify: Callable[[str], None] = print_note


def _read_task(path: Path) -> str:
    """The task file's source (the task is validated in a sandboxed child, never imported)."""
    if not path.is_file():
        raise TaskError("task file not found", str(path))
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"cannot read the task file: {e}", str(path)) from None


def database_url(settings: Settings, override: str | None) -> str:
    """``--db``, else ``KERNELMAP_DATABASE_URL``, else SQLite in the data directory."""
    return override or settings.database_url or db.default_url(settings.data_dir)


def open_database(settings: Settings, override: str | None = None):
    """An up-to-date database: ``(engine, session_factory)``."""
    engine = db.make_engine(database_url(settings, override))
    db.ensure_schema(engine)
    return engine, db.session_factory(engine)


def run_search(
    settings: Settings,
    opts: RunOptions,
    on_progress: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Start (or resume) a run and search until the budget, Ctrl-C or ``stop``.

    Returns a summary dict (run_id, evaluations, elites, coverage, qd_score, best...).
    Raises :class:`KernelmapError` subclasses for bad input before anything starts.
    """
    if opts.redis_url:
        settings = settings.model_copy(update={"redis_url": opts.redis_url})
    engine, sessions = open_database(settings, opts.db_url)
    try:
        if opts.resume is not None:
            run_id, task_file, config = _resume(settings, sessions, opts)
        else:
            run_id, task_file, config = _create(settings, sessions, opts)
        ownership = _own(settings, sessions, run_id)
        stop = stop or threading.Event()
        ownership.keep(stop)
        try:
            return _search(
                settings, sessions, run_id, task_file, config, on_progress, stop,
                ownership=ownership,
            )  # fmt: skip
        finally:
            ownership.release()
    finally:
        engine.dispose()


def _own(settings: Settings, sessions, run_id: int) -> RunOwnership:
    """The lease of a run ``kernelmap run`` is about to search, or :class:`RunError`.

    A run another live process searches is refused; one whose owner died on this host is taken
    at once, one whose owner died elsewhere once that owner's lease has expired.
    """
    owner = settings.controller_id or default_owner()
    ownership = RunOwnership(sessions, run_id, owner, settings.lease_s)
    for _ in range(2):  # a lease that expires between the two looks is taken the second time
        if ownership.acquire():
            return ownership
        holder = ownership.holder()
        if holder is not None:
            raise RunError(
                f"run {run_id} is being searched by {holder}, which renews its lease while it"
                f" runs: stop it first (if it died on another host, its lease expires within"
                f" {settings.lease_s:g} s)"
            )
    raise RunError(f"run {run_id}: could not take its lease; try again")


def _task_name(path: Path) -> str:
    """``softmax/task`` for ``examples/softmax/task.py``; the file stem otherwise."""
    stem = path.stem
    return f"{path.resolve().parent.name}/{stem}" if stem == "task" else stem


def _create(settings: Settings, sessions, opts: RunOptions):
    if opts.task is None:
        raise RunError("a task file is required (or --resume RUN_ID)")
    if opts.budget < 1:
        raise RunError(f"--budget must be at least 1, got {opts.budget}")
    device = resolve_device(opts.device or settings.device)
    source = _read_task(Path(opts.task))
    # In a sandboxed child, never on the GPU here: the workers own it (and check the values
    # there when the inputs are too large to check on this machine's CPU).
    meta = validate_source(
        source,
        device="cpu",
        memory_mb=settings.memory_limit_mb,
        sandbox=settings.sandbox,
        path=str(opts.task),
    )
    seeds = [load_seed(Path(p)) for p in opts.seeds]
    ref = reference_seed(source)
    if ref is not None:
        seeds.insert(0, ref)
    notes: list[str] = []
    if opts.templates:
        found, notes = template_seeds(source, device.type, opts.notify, sandbox=settings.sandbox)
        seeds += found
    dims_spec = opts.dims or ",".join(default_dims(device.type, [s.space for s in seeds]))
    try:
        parse_dims(dims_spec, device.type)  # refuses bad dimensions before anything starts
    except ValueError as e:
        raise RunError(f"--dims: {e}") from None
    workers = opts.workers or 1
    if workers < 1:
        raise RunError(f"--workers must be at least 1, got {workers}")
    if opts.archive not in ARCHIVES:
        raise RunError(f"--archive must be grid or cvt, got {opts.archive!r}")
    if opts.archive == "cvt" and (opts.cells is None or opts.cells < 2):
        raise RunError("--archive cvt needs --cells N (at least 2)")
    if opts.variation not in VARIATIONS:
        raise RunError(f"--variation must be one of {', '.join(VARIATIONS)}")
    try:
        llm = llm_setup.cli_options(settings, opts)
    except ValueError as e:
        raise RunError(str(e)) from None
    config = RunConfig.new(
        device=device.type,
        seeds=seeds,
        timeout_s=settings.timeout_s,
        dims=dims_spec,
        workers=workers,
        variation=opts.variation,
        archive=opts.archive,
        cells=opts.cells,
        templates=opts.templates,
        templates_added=opts.templates,  # matched above: they are among the seeds
        template_notes=notes[:20],
        llm=llm,
    )
    with sessions() as s:
        task_row = repository.add_task(
            s,
            name=_task_name(Path(opts.task)),
            source=source,
            meta=meta,
            validation={"ok": True, "device": "cpu", "values_checked": meta["values_checked"]},
        )
        run = repository.create_run(
            s,
            task_id=task_row.id,
            config=config.to_json(),
            budget=opts.budget,
            seed=random.SystemRandom().getrandbits(31),
            device=device.type,
            objective_label=objective_label(device.type, seeds),
        )
        s.commit()
        run_id, task_id = run.id, task_row.id
    return run_id, wiring.task_file(settings, task_id, source), config


def _resume(settings: Settings, sessions, opts: RunOptions):
    if opts.llm or opts.llm_models:
        raise RunError(
            "--llm cannot be given with --resume: a resumed run keeps the LLM search it was"
            " started with"
        )
    with sessions() as s:
        run = repository.get_run(s, opts.resume)
        if run.status not in RESUMABLE:
            raise RunError(
                f"run {run.id} is {run.status}: only interrupted or crashed runs can be resumed"
            )
        task = repository.get_task(s, run.task_id)
        config = RunConfig.from_json(run.config)
        return run.id, wiring.task_file(settings, task.id, task.source), config


def search_stored_run(
    settings: Settings,
    sessions,
    run_id: int,
    *,
    stop: threading.Event,
    ownership: RunOwnership,
    make_dispatcher: Callable[..., Any] | None = None,
    probe_templates: Callable[[str, str], tuple[list[Seed], list[str]]] | None = None,
    status_on_stop: str | None = None,
) -> dict[str, Any]:
    """Search (or resume) a run stored by the API, as the controller does.

    ``ownership`` holds the run's lease (acquired, kept and released by the caller): every
    write is fenced by it, and a search whose lease another owner took ends with status
    :data:`LOST`.

    The first time, the template library's seeds are matched in a sandboxed child
    (:func:`services.runs.template_probe.probe_templates`) and stored in the run's configuration,
    so a resumed run rebuilds the same emitters. At least ``settings.run_jobs_in_flight`` jobs
    are kept in flight. A run its owner paused or cancelled before it started is left alone.
    """
    try:
        with sessions() as s:
            run = repository.get_run(s, run_id)
            task = repository.get_task(s, run.task_id)
            config = RunConfig.from_json(run.config)
            device, source, task_id = run.device, task.source, task.id
        if config.templates and not config.templates_added:
            if probe_templates is None:
                from services.runs.template_probe import probe_templates as probe

                probe_templates = functools.partial(probe, sandbox=settings.sandbox)
            found, notes = probe_templates(source, "cpu" if device == "cpu" else "cuda")
            config = dataclasses.replace(
                config, seeds=config.seeds + found, templates_added=True, template_notes=notes[:20]
            )
            with sessions() as s:
                ownership.fence(s)
                row = repository.get_run(s, run_id)
                row.config = config.to_json()
                # What `kernelmap run` labels the same set-up (its templates are matched
                # before the run is stored).
                row.objective_label = objective_label(device_of_class(device), config.seeds)
                s.commit()
        # Not stored: the controller's own floor of jobs in flight.
        config = dataclasses.replace(
            config, workers=max(config.workers, settings.run_jobs_in_flight)
        )
        with sessions() as s:
            ownership.fence(s)
            if not run_control.mark_running(s, run_id):
                s.rollback()
                return {"run_id": run_id, "status": run_control.status_of(s, run_id)}
            s.commit()
        return _search(
            settings,
            sessions,
            run_id,
            wiring.task_file(settings, task_id, source),
            config,
            None,
            stop,
            ownership=ownership,
            make_dispatcher=make_dispatcher,
            status_on_stop=status_on_stop,
        )
    except LeaseLost:
        return _lost(run_id, ownership)


def _search(
    settings: Settings,
    sessions,
    run_id: int,
    task_file: Path,
    config: RunConfig,
    on_progress,
    stop: threading.Event | None,
    *,
    ownership: RunOwnership,
    make_dispatcher: Callable[..., Any] | None = None,
    status_on_stop: str | None = RunStatus.INTERRUPTED,
) -> dict[str, Any]:
    """Search run ``run_id`` (already stored) until its budget, ``stop`` or a failure.

    ``make_dispatcher(run_id=, device=, task_file=, eval_config=, workers=)`` builds the
    dispatcher (default: :func:`services.runs.wiring.make_dispatcher`, the local pool or the
    Celery queue). When ``stop`` ends the search, the run becomes ``status_on_stop`` (None
    leaves it ``running``, for a controller that will resume it), unless its owner paused or
    cancelled it meanwhile: that status stays. ``ownership`` holds the run's lease (its
    keeper sets ``stop`` when the lease is lost): when another owner takes the run the search
    stops, writes nothing more and returns the status :data:`LOST`.
    """
    stop = stop or threading.Event()
    try:
        return _search_owned(
            settings, sessions, run_id, task_file, config, on_progress, stop,
            ownership=ownership, make_dispatcher=make_dispatcher, status_on_stop=status_on_stop,
        )  # fmt: skip
    except LeaseLost:
        return _lost(run_id, ownership)


def _lost(run_id: int, ownership: RunOwnership) -> dict[str, Any]:
    return {"run_id": run_id, "status": LOST, "owner": ownership.holder()}


def _search_owned(
    settings: Settings,
    sessions,
    run_id: int,
    task_file: Path,
    config: RunConfig,
    on_progress,
    stop: threading.Event,
    *,
    ownership: RunOwnership,
    make_dispatcher: Callable[..., Any] | None,
    status_on_stop: str | None,
) -> dict[str, Any]:
    with sessions() as s:
        ownership.fence(s)
        run = repository.get_run(s, run_id)
        budget, rng_seed, device = run.budget, run.seed, run.device
        state = dict(run.archive_state or {})
        repository.set_run_status(s, run_id, RunStatus.RUNNING)
        s.commit()
    hardware_class = device  # the queue's class (cpu, cuda, h100...): its device is cpu or cuda
    device = device_of_class(hardware_class)
    if config.dims is None:
        raise RunError(f"run {run_id} has no descriptor dimensions in its configuration")
    dims = parse_dims(config.dims, device)
    archive = wiring.build_archive(dims, config, state, rng_seed)
    if archive.centroids is not None and "centroids" not in state:
        # k-means is not reproducible across library versions: keep the centroids.
        with sessions() as s:
            repository.set_archive_state(s, run_id, {"centroids": archive.centroids.tolist()})
            s.commit()
    with sessions() as s:
        proposed = repository.count_proposals(s, run_id)
    seed = wiring.emitter_seed(rng_seed, proposed)
    emitters = wiring.build_emitters(config.seeds, dims, seed, config.variation)
    eval_config = settings.eval_config(
        device=device, timeout_s=config.timeout_s, time_interpreted=device == "cpu"
    )
    make_dispatcher = make_dispatcher or functools.partial(wiring.make_dispatcher, settings)
    pool = make_dispatcher(
        run_id=run_id,
        device=hardware_class,
        task_file=task_file,
        eval_config=eval_config,
        workers=config.workers,
    )
    store: Any = RunStore(sessions, run_id, fence=ownership.fence)
    llm = None
    if config.llm is not None:
        store = llm_setup.SpecMemo(store)
        try:
            llm = llm_setup.build_llm(
                settings, sessions, run_id, llm_setup.LlmOptions.from_json(config.llm),
                task_source=task_file.read_text(), dims=dims, archive=archive, store=store,
                hardware=llm_setup.hardware_facts(hardware_class, device), seed=seed,
                fence=ownership.fence,
            )  # fmt: skip
        except KernelmapError as e:
            pool.close()
            _write_end(sessions, run_id, RunStatus.FAILED, str(e), None, ownership)
            raise RunError(f"run {run_id}: LLM search cannot start: {e}") from None
        emitters.append(llm.emitter)
    loop = SearchLoop(
        archive,
        emitters,
        pool,
        store,
        budget,
        prefilter=wiring.gate_prefilter(),
        on_progress=on_progress,
    )
    previous = signal.getsignal(signal.SIGINT)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    status, error, reason = RunStatus.FAILED, None, None
    try:
        loop.resume()
        summary = loop.run(stop)
        reason = summary.stopped_reason
        status = RunStatus.INTERRUPTED if stop.is_set() else RunStatus.FINISHED
        if summary.refused is not None:
            status, error = RunStatus.FAILED, summary.refused
    except LeaseLost:
        raise
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        if llm is not None:
            try:
                llm.close()
            except LeaseLost:
                pass  # the run is another owner's: its requests are theirs to settle
        pool.close()
        if ownership.lost.is_set():
            status = LOST  # the run is another owner's now: its status is theirs to write
        else:
            status = _write_end(
                sessions, run_id, status, error, status_on_stop, ownership, reason=reason
            )
    out = dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) else dict(summary)
    out.update(run_id=run_id, status=status)
    return out


def _write_end(
    sessions, run_id, status, error, status_on_stop, ownership, *, reason: str | None = None
) -> str:
    """Store how the search ended (see :func:`_search`) and why it stopped (``reason``, the
    loop's ``stopped_reason``; None after a failure); returns the run's status."""
    with sessions() as s:
        try:
            ownership.fence(s)
        except LeaseLost:
            return LOST
        current = run_control.status_of(s, run_id)
        stopped = status == RunStatus.INTERRUPTED
        if stopped and current in (RunStatus.PAUSED, RunStatus.CANCELLED):
            status = current  # its owner stopped it: that is its status
        elif stopped and status_on_stop is None:
            status = RunStatus.RUNNING  # the controller resumes it when it starts again
        else:
            if stopped:
                status = status_on_stop or status
            repository.set_run_status(s, run_id, status, error=error)
        if status != RunStatus.RUNNING:  # a run left running for its next owner has not stopped
            repository.get_run(s, run_id).stop_reason = reason
        s.commit()
    return status
