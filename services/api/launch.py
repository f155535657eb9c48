"""Creating a queued run from an API request: seeds checked, configuration filled in.

The configuration is built by :func:`services.run_config.run_config`, as for a CLI run, so a
controller can start either the same way: the task's reference as the first seed, then the
request's seed candidates, the hardware class's default descriptor dimensions, a Gaussian
parameter emitter over a grid archive. Template seeds are not added here: matching them runs the
task's code, which the API process never does; the controller that starts the run adds them.
"""

from __future__ import annotations

import random

from sqlalchemy.orm import Session

from archive import repository
from archive.models import Run, Task, User
from services.api.errors import Unprocessable
from services.run_config import objective_label, run_config
from services.seeds import Seed, SeedError, check_seed, reference_seed


def check_seeds(task: Task, sources: list[str]) -> list[Seed]:
    """The run's seeds: the task's reference, then each submitted source, checked.

    Raises
    ------
    SeedError
        Naming the seed (``seed_candidates[i]``) and what is wrong with it (422).
    """
    seeds = []
    ref = reference_seed(task.source)
    if ref is not None:
        seeds.append(ref)
    for i, source in enumerate(sources):
        label = f"seed_candidates[{i}]"
        try:
            seeds.append(check_seed(label, source))
        except SeedError as e:
            raise Unprocessable(str(e), field=label) from None
        except (RecursionError, MemoryError, ValueError) as e:  # absurd nesting, odd input
            msg = f"seed candidate {label} cannot be parsed: {type(e).__name__}: {e}"
            raise Unprocessable(msg, field=label) from None
    return seeds


def create_queued_run(
    session: Session,
    user: User,
    task: Task,
    *,
    budget: int,
    hardware: str,
    seed_sources: list[str],
    timeout_s: float,
) -> Run:
    """Check the seeds and create a ``queued`` run owned by ``user`` (not committed)."""
    seeds = check_seeds(task, seed_sources)
    config = run_config(device=hardware, seeds=seeds, timeout_s=timeout_s)
    return repository.create_run(
        session,
        task_id=task.id,
        config=config,
        budget=budget,
        seed=random.SystemRandom().getrandbits(31),
        device=hardware,
        objective_label=objective_label(hardware, seeds),
        owner_id=user.id,
    )
