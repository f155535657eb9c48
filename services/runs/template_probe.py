"""Template seeds for a task, matched in a sandboxed child (the controller and ``kernelmap run``).

A run created through the API carries only the reference and the user's seeds: the API never
runs a task's code. When the controller starts such a run (and when ``kernelmap run`` creates
one) it asks :mod:`evolution.templates.probe`, in a sandboxed child process, which templates
match, checks each template candidate like any seed, and stores them in the run's
configuration so a resumed run keeps the same emitters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from evaluator_worker.task_child import SANDBOX_EXIT
from services.runs.json_child import run_json_child
from services.runs.seeds import Seed, SeedError, check_seed

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120.0
PROBE_MEMORY_MB = 8192


def probe_templates(
    source: str, device: str, *, timeout_s: float = PROBE_TIMEOUT_S, sandbox: str = "strict"
) -> tuple[list[Seed], list[str]]:
    """The template seeds for a task's ``source`` on ``device``, and notes on what declined.

    ``sandbox`` is the child's sandbox mode (``Settings.sandbox``). Never raises for a task's
    fault: a task that cannot be matched yields no seeds and a note saying why (the run goes
    on with its other emitters); so does a host where strict mode cannot set up the sandbox
    (the note says so; no code of the task ran).
    """
    args = ["--device", device, "--memory-mb", str(PROBE_MEMORY_MB)]
    answer = run_json_child(
        "evolution.templates.probe",
        source,
        args,
        device="cpu",
        timeout_s=timeout_s,
        sandbox=sandbox,
    )
    if answer.timed_out:
        return [], [f"template matching took longer than {timeout_s:g} s: skipped"]
    verdict = answer.verdict
    if answer.returncode == SANDBOX_EXIT and verdict and verdict.get("sandbox"):
        log.error("template matching skipped: %s", verdict.get("error"))
        return [], [
            "template matching skipped: the sandbox cannot be set up on this host, so the"
            " task's code was not run (the log says what the host lacks)"
        ]
    if verdict is None:
        log.warning("template probe exited with %s: %s", answer.returncode, answer.stderr[-2000:])
        return [], [f"template matching crashed (exit code {answer.returncode}): skipped"]
    if not verdict.get("ok"):
        return [], [str(verdict.get("error", "template matching failed"))]
    seeds, notes = [], [str(d) for d in verdict.get("declined", [])]
    for t in verdict.get("templates", []):
        try:
            seeds.append(check_seed(str(t["label"]), str(t["source"])))
        except (SeedError, KeyError) as e:  # a template bug: said, never hidden
            notes.append(f"template {t.get('label')} skipped: {e}")
    return seeds, notes


def template_seeds(
    source: str, device: str, notify: Callable[[str], None], *, sandbox: str = "strict"
) -> tuple[list[Seed], list[str]]:
    """Seeds from the template library for what the reference computes, and the matcher's
    notes (why a template does not apply).

    Matched in a sandboxed child (:func:`services.runs.template_probe.probe_templates`): this
    process never imports the task. What no template covers is said, and the run goes on with
    its other emitters.
    """
    seeds, notes = probe_templates(source, device, sandbox=sandbox)
    if seeds:
        for note in notes:  # a template bug: said, never hidden, and the run goes on
            if note.startswith("template ") and " skipped: " in note:
                notify(note)
        notify("templates: " + ", ".join(s.label for s in seeds))
    else:
        notify("templates: none applies; " + "; ".join(notes[:6]))
    return seeds, notes
