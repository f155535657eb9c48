"""The candidate process: imports one candidate (or the reference) and runs what the judge asks.

Everything here runs inside the sandbox, next to untrusted code, so nothing here decides a
verdict: it runs calls, takes timings and reports raw data. The judge regenerates the inputs
itself and compares. Requests and replies are :mod:`evaluator_worker.protocol` messages.

Roles: ``candidate`` builds ``ModelNew`` and loads the re-randomised reference parameters
into it; ``baseline`` builds the reference ``Model`` eagerly and under ``torch.compile``, so
the baselines are timed by the same code as the candidate, in a process without candidate code;
``task`` and ``reference`` run the task's code for the judge (:mod:`reference_role`);
``prebuild`` compiles the evaluator's own Triton kernels (:mod:`triton_prebuild`).

What goes back is bounded: an error message is cut at :data:`MAX_MESSAGE` characters.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import torch

from evaluator_worker import features, inputs, memory, protocol, reference_role, timing
from evaluator_worker.modules import describe, error_line, import_file
from evaluator_worker.verdict import Verdict

MAX_MESSAGE = 4000
OOM_MARKERS = ("out of memory", "can't allocate memory", "Cannot allocate memory")

CUDA_FATAL_MARKERS = (
    "illegal memory access",
    "CUDA error",
    "cudaError",
    "illegal instruction",
    "unspecified launch failure",
    "misaligned address",
    "device-side assert",
)


class CandidateFailure(Exception):
    """A failure the judge turns into a verdict; ``kind`` is the verdict name."""

    def __init__(self, kind: Verdict | str, message: str) -> None:
        super().__init__(message)
        self.kind = str(kind)


class Child:
    """State of one candidate process between the judge's requests."""

    def __init__(self, sandbox: dict[str, Any]) -> None:
        self.sandbox = sandbox
        self.models: dict[str, Any] = {}
        self.pool: list[list[Any]] = []
        self.pool_specs: list[dict[str, Any]] | None = None
        self.warm: set[str] = set()
        self.last: dict[str, Any] = {}
        self.kept: Any = None
        self.flusher: timing.Flusher | None = None
        self.candidate_path: str | None = None
        self.candidate: Any = None
        self.sync_overhead_ms: float | None = None
        self.graphs: dict[str, list[tuple[Any, Any]]] = {}
        self.task_role: Any = None

    # -- requests -------------------------------------------------------------------------
    def setup(self, req: dict[str, Any]) -> dict[str, Any]:
        self.device = torch.device(req["device"])
        self.cuda = self.device.type == "cuda"
        allow_tf32 = bool(req.get("allow_tf32", False))
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
        torch.set_float32_matmul_precision("high" if allow_tf32 else "highest")
        if self.cuda:
            torch.cuda.set_device(self.device)
            fraction = self.sandbox.get("cuda_memory_fraction")
            if fraction:  # before any task or candidate code runs
                torch.cuda.set_per_process_memory_fraction(float(fraction), self.device)
        else:
            # One intra-op thread: the candidate and baseline processes then time the same way,
            # and OpenMP spin-waits cannot turn a busy neighbour core into a 100x slowdown.
            torch.set_num_threads(1)
        if req["role"] == "prebuild":  # the evaluator's trusted kernels, no task or candidate
            from evaluator_worker import triton_prebuild

            return {"ok": True, **triton_prebuild.run(self.device), "sandbox": self.sandbox}
        if req["role"] == "task":
            self.task_role = reference_role.TaskRole(req, self.device)
            return {"ok": True, "info": self.task_role.info(), "sandbox": self.sandbox}
        if req["role"] == "reference":
            self.task_role = reference_role.ReferenceRole(req, self.device)
            return {"ok": True, "sandbox": self.sandbox}
        t0 = time.perf_counter()
        self.task = import_file(req["task_path"], "kernelmap_task")
        init, ref = inputs.build_reference(
            self.task, int(req["init_seed"]), int(req["param_seed"]), self.device
        )
        if req["role"] == "baseline":
            self.models["eager"] = ref
            if req.get("compile"):
                self.models["compile"] = torch.compile(ref)
            return {"ok": True, "load_s": time.perf_counter() - t0, "sandbox": self.sandbox}
        cuda_t0 = time.perf_counter()
        if self.cuda:
            torch.zeros(1, device=self.device)
        cuda_init_s = time.perf_counter() - cuda_t0
        self.candidate_path = req["candidate_path"]
        t1 = time.perf_counter()
        try:
            mod = import_file(self.candidate_path, "kernelmap_candidate", inject=req.get("params"))
        except SyntaxError as e:
            raise CandidateFailure(
                Verdict.COMPILE_ERROR, self._where(e, f"syntax error: {e.msg}")
            ) from None
        except Exception as e:
            raise CandidateFailure(
                Verdict.LOAD_ERROR, self._where(e, f"importing the candidate raised {describe(e)}")
            ) from None
        cls = getattr(mod, "ModelNew", None)
        if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
            raise CandidateFailure(
                Verdict.LOAD_ERROR, "the candidate defines no class ModelNew(nn.Module)"
            )
        try:
            with torch.device(self.device):
                model = cls(*init)
            model = model.to(self.device)
        except Exception as e:
            raise CandidateFailure(
                Verdict.LOAD_ERROR,
                self._where(e, f"ModelNew(*get_init_inputs()) raised {describe(e)}"),
            ) from None
        want = ref.state_dict()
        have = model.state_dict()
        if want:
            missing = sorted(set(want) - set(have))
            extra = sorted(set(have) - set(want))
            if missing or extra:
                raise CandidateFailure(
                    Verdict.LOAD_ERROR,
                    "ModelNew's parameters and buffers must have the reference Model's state_dict"
                    f" keys (they are loaded from it): missing {missing[:8]},"
                    f" unexpected {extra[:8]}",
                )
            try:
                model.load_state_dict(want, strict=True)
            except Exception as e:
                raise CandidateFailure(
                    Verdict.LOAD_ERROR,
                    f"loading the reference parameters into ModelNew failed: {describe(e)}",
                ) from None
        del ref, want
        self.models["candidate"] = model.eval()
        self.candidate = mod
        return {
            "ok": True,
            "load_s": time.perf_counter() - t1,
            "cuda_init_s": cuda_init_s,
            "task_s": t1 - t0 - cuda_init_s,
            "sandbox": self.sandbox,
        }

    def _where(self, exc: BaseException, text: str) -> str:
        line = error_line(exc, self.candidate_path) if self.candidate_path else None
        return f"line {line}: {text}" if line else text

    def _forward(self, variant: str, args: list[Any]) -> list[torch.Tensor]:
        model = self.models[variant]
        with torch.no_grad():
            out = model(*args)
        if self.cuda:
            torch.cuda.synchronize()
        if type(out) in (tuple, list):
            flat = list(out)
        else:
            flat = [out]
        for k, y in enumerate(flat):
            if type(y) is not torch.Tensor:
                raise CandidateFailure(
                    Verdict.INCORRECT,
                    f"forward output {k} is a {type(y).__name__}, not exactly a torch.Tensor",
                )
            if y.device != self.device and not (y.device.type == self.device.type):
                raise CandidateFailure(
                    Verdict.INCORRECT,
                    f"forward output {k} is on {y.device}, expected {self.device}",
                )
        return flat

    def _poison(self, sizes: list[int]) -> None:
        # Free memory full of NaN: a kernel that returns torch.empty(...) without writing it
        # gets NaN, never a leftover of an earlier correct result.
        for n in sizes:
            t = torch.empty(max(1, int(n) // 4), dtype=torch.float32, device=self.device)
            t.fill_(float("nan"))
            del t

    def call(self, req: dict[str, Any]) -> dict[str, Any]:
        """Run one correctness call; replies with the guarded input buffers.

        The outputs stay here until the judge asks for them (:meth:`outputs`), so the judge
        can check and free the inputs before the outputs arrive.
        """
        self.kept = None
        memory.release_cached(self.device)
        variant = req["variant"]
        spec = inputs.InputSpec.from_dict(req["spec"])
        xs = inputs.generate(self.task, spec, self.device)
        args, bufs = [], []
        for x in xs:
            if isinstance(x, torch.Tensor):
                view, buf = inputs.guarded(x)
                args.append(view)
                bufs.append(buf)
            else:
                args.append(x)
        xs = x = None  # the unguarded inputs are not kept beside their guarded copies
        self._poison(req.get("poison_bytes", []))
        outs = [self._forward(variant, args) for _ in range(int(req.get("repeat", 1)))]
        del args
        self.kept = outs
        return {"buffers": bufs}

    def outputs(self, req: dict[str, Any]) -> dict[str, Any]:
        """The outputs of the last :meth:`call`, one list per repeat."""
        if not isinstance(self.kept, list):
            raise CandidateFailure(Verdict.RUNTIME_ERROR, "no call to return the outputs of")
        return {"outputs": self.kept}

    def memory(self, req: dict[str, Any]) -> dict[str, Any]:
        """Peak memory of this process since it was forked (see :func:`memory_stats`)."""
        stats = memory.stats(getattr(self, "device", None))
        stats["ipc_fallbacks"] = list(protocol.IPC_FALLBACKS[:3])
        stats["ipc_fallback_count"] = len(protocol.IPC_FALLBACKS)
        return {"memory": stats}

    def _pool(self, specs: list[dict[str, Any]]) -> list[list[Any]]:
        """The timing pool for ``specs``, refilled in place when the specs change.

        The tensor objects stay the same while their values change, so a cache keyed by
        object identity returns stale outputs (which the judge's re-check catches).
        """
        if specs == self.pool_specs:
            return self.pool
        if self.pool_specs is None:
            # The first pool: what correctness left cached goes back before timing starts.
            self.kept = None
            memory.release_cached(self.device)
        if len(specs) != len(self.pool):
            self.pool = []
        # One input set at a time: a whole second pool beside the first would double the
        # memory of the largest tasks.
        for i, spec in enumerate(specs):
            new = inputs.generate(self.task, inputs.InputSpec.from_dict(spec), self.device)
            if i == len(self.pool):
                self.pool.append(new)
                continue
            old = self.pool[i]
            for k, (a, b) in enumerate(zip(old, new, strict=True)):
                if isinstance(a, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype:
                    a.copy_(b)
                else:
                    old[k] = b
            del new
        self.pool_specs = specs
        return self.pool

    def time(self, req: dict[str, Any]) -> dict[str, Any]:
        variant = req["variant"]
        self.last.pop(variant, None)  # one output of a variant alive at a time, not two
        pool = self._pool(req["pool"])
        fwd = lambda x: self._forward_fast(variant, x)  # noqa: E731
        warm = 0
        t0 = time.perf_counter()
        if req.get("warmup", True) and variant not in self.warm:
            warm = timing.warm_up(
                fwd, pool, int(req["warmup_calls"]), float(req["warmup_s"]), self.cuda
            )
            self.warm.add(variant)
        warm_s = time.perf_counter() - t0
        n, start = int(req["n"]), int(req.get("start", 0))
        if self.cuda:
            if self.flusher is None:
                self.flusher = timing.Flusher(self.device)
            if self.sync_overhead_ms is None:
                self.sync_overhead_ms = timing.sync_overhead(self.flusher, self.device)
            r = timing.time_cuda(fwd, pool, n, self.flusher, start, paired=req.get("paired", True))
            r["sync_overhead_ms"] = self.sync_overhead_ms
        else:
            r = timing.time_cpu(fwd, pool, n, start)
        self.last[variant] = (r.pop("out"), r["last_index"])
        r["warmup_calls"], r["warmup_s"] = warm, warm_s
        return r

    def batch(self, req: dict[str, Any]) -> dict[str, Any]:
        """Run ``n`` calls back to back over the pool; the judge times the whole request."""
        variant, pool = req["variant"], self._pool(req["pool"])
        for i in range(int(req["n"])):
            self._forward_fast(variant, pool[i % len(pool)])
        if self.cuda:
            torch.cuda.synchronize()
        return {"done": True}

    def graph_capture(self, req: dict[str, Any]) -> dict[str, Any]:
        """Capture one call per pool input set in a CUDA graph of its own.

        One call per graph: a candidate that skips work on repeated calls gains nothing,
        and the judge checks the output of the last replay against the reference.
        """
        variant, pool = req["variant"], self._pool(req["pool"])
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for x in pool:  # warm-up off the capture (lazy workspaces, autotuners)
                self._forward_fast(variant, x)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize()
        graphs = []
        for x in pool:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = self._forward_fast(variant, x)
            graphs.append((g, out))
        torch.cuda.synchronize()
        self.graphs[variant] = graphs
        return {"graphs": len(graphs)}

    def graph_replay(self, req: dict[str, Any]) -> dict[str, Any]:
        """Replay the captured graphs ``n`` times round-robin; the judge times the request."""
        variant = req["variant"]
        graphs = self.graphs[variant]
        n = int(req["n"])
        for i in range(n):
            graphs[i % len(graphs)][0].replay()
        torch.cuda.synchronize()
        last = (n - 1) % len(graphs)
        self.last["graph:" + variant] = (graphs[last][1], last)
        return {"done": True}

    def last_index(self, req: dict[str, Any]) -> dict[str, Any]:
        """Which pool input set the last timed call of ``variant`` used."""
        return {"index": self.last[req["variant"]][1]}

    def _forward_fast(self, variant: str, x: list[Any]) -> Any:
        with torch.no_grad():
            return self.models[variant](*x)

    def last_output(self, req: dict[str, Any]) -> dict[str, Any]:
        out, idx = self.last[req["variant"]]
        flat = list(out) if type(out) in (tuple, list) else [out]
        for k, y in enumerate(flat):
            if type(y) is not torch.Tensor:
                raise CandidateFailure(
                    Verdict.INCORRECT, f"timed output {k} is a {type(y).__name__}"
                )
        if self.cuda:
            torch.cuda.synchronize()
        self.kept = flat
        return {"outputs": flat, "index": idx}

    def profile(self, req: dict[str, Any]) -> dict[str, Any]:
        if not self.cuda:
            return {"profile": None}
        variant = req["variant"]
        xs = inputs.generate(self.task, inputs.InputSpec.from_dict(req["spec"]), self.device)
        marker = torch.zeros(1, device=self.device)
        own = features.kernel_names(self.candidate) if self.candidate is not None else set()
        return {
            "profile": features.profile_call(
                lambda: self._forward_fast(variant, xs), lambda: marker.add_(1), own
            )
        }

    def features(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.candidate is None or not self.cuda:
            return {"triton": [], "cupy": []}
        return {
            "triton": features.triton_features(self.candidate),
            "cupy": features.cupy_features(self.candidate),
        }

    def task_op(self, name: str) -> Any:
        """A request of the ``task``/``reference`` roles, answered by their object."""

        def handle(req: dict[str, Any]) -> dict[str, Any]:
            method = getattr(self.task_role, name, None)
            if method is None:
                raise CandidateFailure(
                    Verdict.RUNTIME_ERROR, f"{name!r} is not a request of this role"
                )
            return method(req)

        return handle


def classify(exc: BaseException, stage: str) -> tuple[str, str]:
    """The verdict name and message for an exception raised by candidate code."""
    if isinstance(exc, (CandidateFailure, reference_role.TaskFailure)):
        return exc.kind, str(exc)
    text = describe(exc)
    if isinstance(exc, MemoryError) or any(m in str(exc) for m in OOM_MARKERS):
        text = f"out of memory (the process hit its memory limit): {text}"
    name, mod = type(exc).__name__, type(exc).__module__
    if any(m in str(exc) for m in CUDA_FATAL_MARKERS) or name == "AcceleratorError":
        return Verdict.CUDA_FATAL.value, text
    if (mod.startswith("triton") and "Compil" in name) or name == "CompileException":
        return Verdict.COMPILE_ERROR.value, text
    return (Verdict.LOAD_ERROR if stage == "setup" else Verdict.RUNTIME_ERROR).value, text


def serve(sock: socket.socket, sandbox: dict[str, Any]) -> int:
    """Answer the judge's requests until it says ``exit`` or closes the channel."""
    memory.mark_start()
    child = Child(sandbox)
    handlers = {
        "setup": child.setup,
        "call": child.call,
        "time": child.time,
        "last_output": child.last_output,
        "profile": child.profile,
        "features": child.features,
        "batch": child.batch,
        "outputs": child.outputs,
        "last_index": child.last_index,
        "graph_capture": child.graph_capture,
        "graph_replay": child.graph_replay,
        "memory": child.memory,
        **{op: child.task_op(op) for op in ("expected", "release", "floor", "check_values")},
    }
    while True:
        try:
            req = protocol.recv(sock)
        except protocol.ProtocolError:
            return 0
        op = req.get("op")
        if op == "exit":
            return 0
        try:
            reply = handlers[op](req)
        except BaseException as e:  # every failure of candidate code becomes a report
            kind, text = classify(e, op)
            if op != "setup" and child.candidate_path and kind != Verdict.CUDA_FATAL:
                line = error_line(e, child.candidate_path)
                text = f"line {line}: {text}" if line else text
            if len(text) > MAX_MESSAGE:
                text = text[:MAX_MESSAGE] + f" [... {len(text) - MAX_MESSAGE} characters cut]"
            reply = {"error": {"kind": kind, "message": text}}
            if isinstance(e, reference_role.TaskFailure):
                reply["error"]["line"] = e.line
        try:
            protocol.send(sock, reply, cuda_ipc=bool(req.get("ipc", True)))
        except protocol.ProtocolError as e:
            protocol.send(
                sock,
                {"error": {"kind": Verdict.RUNTIME_ERROR.value, "message": f"cannot report: {e}"}},
            )
        if "error" in reply and reply["error"]["kind"] == Verdict.CUDA_FATAL:
            return 3
