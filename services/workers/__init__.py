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
``hardware``
    Hardware facts in one place: :func:`hardware.hardware_info`, what either kind of worker
    reports about its machine (GPU, driver, CUDA, library versions), CUDA never initialised.
``fleet``
    What Redis knows of the Celery fleet: each worker's :class:`fleet.Heartbeat` record, live
    workers, queue depths (the interval is ``Settings.heartbeat_s``).
``remote``
    The remote worker (:func:`remote.run_remote_worker`): the claim loop, lease keeping while
    a job is evaluated.
``remote_client``
    Its side of the HTTP API: the server's URL checked, retries with backoff, enrolment and
    the saved token, one method per call.
``remote_results``
    Its finished results, kept on disk until the server has them.
"""
