"""services.dispatch: how a job reaches an evaluator on a GPU, and how its result comes back.

Every dispatcher is an :class:`evolution.ports.Dispatcher`: the search loop submits
:class:`evolution.ports.Job` objects (a job id, a candidate's source and parameters) and polls
:class:`evolution.ports.JobResult` objects back; it never knows which route a job took.

Route map
---------
1. The loop (:mod:`evolution.loop`) proposes a candidate; the static gate has already refused
   what cannot run; the run store records the proposal and the job (:mod:`archive.run_store`).
2. The job takes one of these routes, chosen by :func:`services.runs.wiring.make_dispatcher`:

   ``local`` (:class:`local.LocalPool`, embedded ``kernelmap run``)
       a pool of local processes, each with one :class:`evaluator_worker.judge.Evaluator`.
   ``celery_queue`` (:class:`celery_queue.CeleryDispatcher`: ``run --redis``, the controller)
       a Celery message on the queue ``eval.<hardware-class>``; a ``kernelmap worker``
       (:mod:`services.workers.tasks`) evaluates it and sends the result back as a message on
       ``controller.<run_id>``, which :meth:`CeleryDispatcher.poll` drains.
   ``leases`` (:class:`LeaseDispatcher`, remote workers over HTTPS)
       a row of ``remote_jobs`` (:func:`archive.leases.offer`); a remote worker
       (:mod:`services.workers.remote`) claims it with a lease through
       :mod:`services.api.routes.remote`, evaluates it and posts the result into the row.
   ``fleet`` (:class:`FleetDispatcher`, the controller)
       chooses between the Celery queue and the leases per job, by who is alive.

   Wherever it runs, one job is evaluated by :func:`job_eval.evaluate_job`: the judge in its
   sandbox (:mod:`evaluator_worker`), answering a result shaped like
   :meth:`evaluator_worker.result.EvalResult.to_dict`.
3. Trust: a result from a remote worker is its own claim, so it arrives marked
   ``unverified`` (:data:`evolution.ports.UNVERIFIED`). The loop never lets an unverified
   result change the map: when one would (:mod:`evolution.verification`), it sends a
   ``trusted_only`` re-measure of the same candidate, which :class:`FleetDispatcher` gives only
   to the Celery fleet inside the cluster. The trusted result decides; with no trusted worker
   of the class alive, the claim is taken as it is, still marked unverified, and
   ``verification`` says why.
4. Results are ingested idempotently by job id (:mod:`archive.run_store`): delivery is at least
   once on every route, so a job may be evaluated twice but is counted once.

Modules
-------
``job_eval``
    Evaluating one job with an evaluator; the shape of the result on the wire.
``local``
    :class:`local.LocalPool`.
``celery_queue``
    :class:`CeleryDispatcher`: sending, reading results, noticing a queue nobody consumes.
``celery_wire``
    The Celery route's wire format: a job as sent (task id, arguments, time limits), a report
    read back, where kombu keeps waiting and taken messages in Redis.
``celery_faults``
    How the Celery dispatcher rides out a lost or restarted broker and results that never
    come (mixed into :class:`CeleryDispatcher`).
``leases``
    :class:`LeaseDispatcher`.
``fleet``
    :class:`FleetDispatcher`.
"""
