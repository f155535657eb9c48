"""evaluator_worker: the evaluator, from a candidate file to a verdict (docs/architecture.md).

The package is cut along a trust boundary. The judge side decides verdicts and never imports
user code (candidates or tasks); the child side runs user code, inside the sandbox, and only
reports raw data. Nothing here imports ``services``, ``archive`` or ``evolution``, and this file
imports nothing, so a sandboxed child that imports one module pays for that module alone.

Modules
-------
Judge side (trusted; no user code is imported here)

``judge``
    :class:`~judge.Evaluator` (one zygote for many evaluations; task validation, static gate,
    spawning children) and :func:`~judge.evaluate`, the one-shot entry point.
``evaluation``
    :class:`~evaluation.Evaluation`, one evaluation in progress: the stages after the gate,
    the processes it started and the secret seeds it drew.
``process``
    :class:`~process.CandidateProcess`, the judge's handle of one sandboxed child: requests
    with deadlines, the process group killed on timeout.
``zygote``
    A trusted interpreter that imported torch and triton (never CUDA) and forks the children;
    it runs only our code, the children it forks enter the sandbox before any user code.
``static_gate``
    The AST check of a candidate's source before any GPU time (:func:`~static_gate.check_source`,
    :class:`~static_gate.GateReport`); standard library only, so the controller runs it too.
``parsing``
    :func:`~parsing.parse`, ``ast.parse`` one thread at a time (CPython 3.11 failed with threads
    parsing at once): what the gate, the candidate keys and the LLM edits parse with;
    :func:`~parsing.parse_shared` keeps the last few trees (the gate and the key share one).
``gate_rules``
    The gate's tables: banned modules, names, prefixes and builtins, and why each is banned.
``cgroup``
    A cgroup v2 memory limit per child, made by the judge (the child moves itself into it).

Measurement and decision (judge side; pure where noted)

``correctness``
    The correctness protocol: trial plan, the ``reference`` child's outputs, the checks.
``compare``
    Comparing an output with the float64 reference (pure; the reference child uses it too).
``measure``
    The timing stage: the candidate interleaved with the baselines, and the quarantine
    re-measure by the judge's own clock.
``crosschecks``
    Verdicts from timings and traces: speedups, async work, profiler checks, floors (pure).
``floor``
    Speed-of-light floors from datasheet peaks (pure).
``memory``
    What a task needs, whether the device has it, what a process used (both sides).
``device``
    Which device ``auto`` means, what hardware ran, the parameters chosen for a candidate.

Child side (runs next to untrusted code, in the sandbox; decides nothing)

``child``
    The candidate process: imports one candidate (or the reference) and runs what is asked.
``reference_role``
    The task's own code in a child: validation, reference outputs, FLOP counts.
``timing``
    The timing protocol run in the child, and the statistics of samples (pure; the judge
    uses those).
``features``
    Features of the compiled kernels (registers, spills, tensor cores) and of a profile.
``modules``
    Importing user files (tasks, candidates) as modules from real files.
``interpreter_fixes``
    Corrections to Triton's CPU interpreter where candidates run interpreted.
``triton_cache`` / ``triton_prebuild``
    Triton's compile cache split in a shared read-only layer (built once by a trusted prebuild
    child from ``triton_prebuild``'s kernels) and a private one per child.

Both sides of the wire

``protocol``
    Messages between the judge and a child: framed JSON plus raw tensor bytes, never pickles.
``inputs``
    Deterministic input sets (:class:`~inputs.InputSpec`), made identically on both sides from
    the seeds the judge draws.

The sandbox (entered by every child before any user code runs)

``sandbox``
    Confining a freshly forked child: session, namespaces, rlimits, seccomp, environment.
``fsview``
    The child's own file-system view: namespaces, a minimal root, ``pivot_root``.
``seccomp``
    The seccomp-BPF syscall filter (pure ctypes).
``task_child``
    The shared start of the children that run a submitted task's code for the service.

Task loading

``task``
    :class:`~task.TaskInfo`, what the judge keeps of a task file (its code runs only in
    children).
``validate_task``
    ``python -m evaluator_worker.validate_task``: validates a task in a sandboxed process.

Shared leaves (importable by every module and by the service)

``config``
    :class:`~config.EvalConfig`, the plain configuration of one evaluation.
``result``
    :class:`~result.EvalResult` and its parts, as the CLI, workers and archive see them.
``verdict``
    :class:`~verdict.Verdict`, the verdicts an evaluation can end with.
``errors``
    Typed errors a user can cause (:class:`~errors.TaskError`,
    :class:`~errors.CandidateFileError`).
"""
