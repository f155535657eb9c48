"""services.workers: the processes that evaluate jobs, and what the fleet knows about them.

Two kinds of worker run the same judge (:func:`services.dispatch.job_eval.evaluate_job`):

- a **Celery worker** (``kernelmap worker``), trusted, inside the cluster: it consumes the
  queue ``eval.<hardware-class>`` from Redis and reports on the run's ``controller.<run_id>``
  queue;
- a **remote worker** (``kernelmap worker --join URL --token KEY``), anywhere: it pulls jobs
  over HTTPS with a lease and posts its results, which the server treats as claims until a
  trusted worker re-measures them (see :mod:`services.dispatch`).

Modules
-------
``celery_app``
    The Celery app, its queues and settings (at-least-once delivery, visibility timeout).
``tasks``
    The Celery task ``evaluate``: a thin adapter around the judge; poison-job counting.
``fleet``
    What Redis knows of the fleet: each worker's hardware facts and heartbeat, live workers,
    queue depths.
``remote``
    The remote worker: enrolment, the claim loop, lease keeping, results kept on disk until
    the server has them.
"""
