"""The static gate's rules: what a candidate's source may not name, and why.

Data only, read by :mod:`evaluator_worker.static_gate`'s walker: banned modules, dotted names,
name prefixes and builtins, each mapped to the reason a rejection gives; the interpreter
internals and tensor hooks that are escapes; the decorators and constructors that declare
custom kernels; the tokens of CUDA sources that distort timing. Adding a rule is adding an
entry here (and a case to ``tests/evaluator/test_static_gate.py``).

Judge side (and controller side: only the standard library is needed, no torch).
"""

from __future__ import annotations

WHY_CATCH = (
    "candidates may not catch errors: a try/except fallback to the reference op is a known hack"
)
WHY_SUBCLASS = "subclasses of the reference or of torch.Tensor and torch hooks can fake outputs"
WHY_ESCAPE = "reaches interpreter internals, a sandbox escape"
WHY_PROCESS = "candidates may not exit, fork, signal or start processes"
WHY_FILES = "candidates have no business reading or writing files"
WHY_RNG = "candidates may not touch the RNG the judge uses to make inputs"
WHY_PRECISION = "candidates may not change precision or determinism settings"
WHY_STREAM = "work on another stream or in a CUDA graph hides from the timer"
WHY_ALLOC = "candidates may not change the caching allocator the judge poisons"
WHY_PROFILER = "candidates may not touch the profiler the judge cross-checks with"
WHY_OVERRIDE = "candidates may not replace the operators or hooks the reference runs"
WHY_PATCH = "candidates may not patch imported modules (timers, torch, triton)"
WHY_ENV = "candidates may not change the environment"
WHY_HIDDEN = "it hides from the gate which code runs or which attribute is reached"
WHY_L2 = "persisting-L2 and access-policy settings distort timing"
WHY_TIMER = "candidates may not read GPU timers"


def _each(names: str, why: str) -> dict[str, str]:
    """``{name: why}`` for each whitespace-separated name (keeps the tables below compact)."""
    return dict.fromkeys(names.split(), why)


# Banned at import and at any use through an import alias; submodules are banned with them
# (``ctypes.util``), so ``os`` and ``sys`` are not here: only some of their names are.
BANNED_MODULES: dict[str, str] = {
    # Interpreter internals (frames, live objects, code objects, raw memory) and the file system.
    **_each(
        """ctypes _ctypes cffi gc inspect importlib builtins code codeop types weakref _weakref
        marshal pickle _pickle dill cloudpickle faulthandler mmap resource posix _posixsubprocess
        pathlib tempfile shutil""",
        "",
    ),
    # A background thread or process can fill the output after the timer stops.
    **_each(
        """subprocess multiprocessing threading _thread concurrent asyncio signal _signal atexit
        pty sched torch.multiprocessing""",
        "work outside the timed call escapes the timer",
    ),
    **_each(
        "socket _socket ssl http urllib urllib3 requests httpx socketserver select selectors",
        "nothing may leave the sandbox",
    ),
    "torch.utils.cpp_extension": "it compiles for ~46 s; CuPy RawKernel is the supported way",
}

# Dotted names banned at import and at any reference (not only calls: ``f = os._exit`` is the same
# escape); an entry also bans everything below it (``torch.cuda.memory`` bans its functions).
BANNED_NAMES: dict[str, str] = {
    "contextlib.suppress": WHY_CATCH,
    **_each(
        "sys.exit os._exit os.abort os.kill os.killpg os.fork os.forkpty os.system os.popen",
        WHY_PROCESS,
    ),
    **_each(
        """sys.modules sys._getframe sys._current_frames sys.settrace sys.setprofile sys.meta_path
        sys.path_hooks sys.addaudithook torch._C""",
        WHY_ESCAPE,
    ),
    **_each("os.putenv os.unsetenv", WHY_ENV),
    **_each(
        """os.open os.read os.write os.fdopen os.dup os.dup2 os.remove os.unlink os.rename
        os.replace os.rmdir os.truncate os.chdir io.open io.FileIO torch.load torch.save
        numpy.load numpy.save numpy.fromfile numpy.memmap""",
        WHY_FILES,
    ),
    **_each(
        """torch.manual_seed torch.seed torch.initial_seed torch.get_rng_state torch.set_rng_state
        torch.random torch.default_generator torch.cuda.manual_seed torch.cuda.manual_seed_all
        torch.cuda.seed torch.cuda.seed_all torch.cuda.initial_seed torch.cuda.get_rng_state
        torch.cuda.get_rng_state_all torch.cuda.set_rng_state torch.cuda.set_rng_state_all
        torch.cuda.random torch.cuda.default_generators""",
        WHY_RNG,
    ),
    **_each(
        """torch.set_float32_matmul_precision torch.set_flush_denormal
        torch.use_deterministic_algorithms torch.set_deterministic_debug_mode
        torch.set_default_dtype torch.set_default_device torch.set_default_tensor_type""",
        WHY_PRECISION,
    ),
    **_each(
        """torch.Stream torch.cuda.Stream torch.cuda.stream torch.cuda.StreamContext
        torch.cuda.streams torch.cuda.ExternalStream torch.cuda.set_stream torch.cuda.CUDAGraph
        torch.cuda.graph torch.cuda.graphs torch.cuda.make_graphed_callables cupy.cuda.Stream
        cupy.cuda.ExternalStream cupy.cuda.Graph""",
        WHY_STREAM,
    ),
    **_each(
        """torch.cuda.memory torch.cuda.empty_cache torch.cuda.set_per_process_memory_fraction
        torch.cuda.caching_allocator_alloc torch.cuda.caching_allocator_delete""",
        WHY_ALLOC,
    ),
    **_each("torch.profiler torch.autograd.profiler torch.cuda.profiler", WHY_PROFILER),
    **_each(
        """torch.library torch.overrides torch.utils._python_dispatch torch.ops.load_library
        torch.classes""",
        WHY_OVERRIDE,
    ),
}

# Families banned by plain string prefix (``os.execv``, ``cupy.cuda.runtime.streamCreate``).
BANNED_PREFIXES: dict[str, str] = {
    "os.exec": WHY_PROCESS,
    "os.spawn": WHY_PROCESS,
    "os.posix_spawn": WHY_PROCESS,
    # Private bindings (streams by id, _sleep) do what the public rules ban, unnamed.
    "torch.cuda._": "private CUDA bindings bypass the other rules",
    "cupy.cuda.runtime.stream": WHY_STREAM,
    "cupy.cuda.runtime.graph": WHY_STREAM,
    "cupy.cuda.runtime.deviceSetLimit": WHY_L2,
    # Global module hooks would run inside the reference model too.
    "torch.nn.modules.module.register_module_": WHY_OVERRIDE,
}

# The default stream is not a new one; naming it is how CuPy code says "no stream switching".
ALLOWED_NAMES = frozenset({"cupy.cuda.Stream.null"})

BANNED_BUILTINS: dict[str, str] = {
    **_each("exec eval compile __import__ breakpoint", WHY_HIDDEN),
    **_each("globals locals vars setattr delattr", WHY_ESCAPE),
    "open": WHY_FILES,
}

ESCAPE_NAMES = frozenset("__builtins__ __loader__ __spec__".split())
ESCAPE_ATTRS = frozenset(
    """__globals__ __code__ __closure__ __subclasses__ __builtins__ __bases__ __base__ __mro__
    __self__ __import__ __loader__ __spec__ __getattribute__ __setattr__ __delattr__ f_globals
    f_locals f_builtins f_back gi_frame cr_frame ag_frame tb_frame""".split()
)
TENSOR_HOOKS = frozenset("_make_subclass __torch_function__ __torch_dispatch__".split())
TENSOR_BASES = frozenset(
    """torch.Tensor torch._C.TensorBase torch._C._TensorBase torch.nn.Parameter
    torch.nn.parameter.Parameter""".split()
)
# Mutating methods: ``os.environ.update(...)`` or ``obj.__dict__.update(...)`` assign too.
MUTATORS = frozenset("update setdefault pop popitem clear __setitem__ __delitem__".split())

# Names a candidate normally gets from ``import``; attribute writes on them are patches even when
# the import is hidden (``np``/``cp`` are the conventional aliases).
DEFAULT_ROOTS = {
    **{name: name for name in "torch triton time builtins os sys math numpy cupy".split()},
    "np": "numpy",
    "cp": "cupy",
}

KERNEL_DECORATORS = frozenset(
    {"triton.jit", "triton.autotune", "triton.heuristics", "cupy.fuse", "cupyx.jit.rawkernel"}
)
CUPY_KERNEL_CTORS = frozenset(
    {"cupy.RawKernel", "cupy.RawModule", "cupy.ElementwiseKernel", "cupy.ReductionKernel"}
)
L2_TOKENS = (
    "cudaStreamSetAttribute",
    "accessPolicyWindow",
    "cudaLimitPersistingL2CacheSize",
    "cudaDeviceSetLimit",
    "hitProp",
    "cudaAccessPropertyPersisting",
)
# PTX special registers for timers (``%clock`` also matches ``%clock64``); they only occur in
# inline asm, whether CUDA ``asm volatile`` or Triton's ``inline_asm_elementwise``.
TIMER_TOKENS = ("%globaltimer", "%clock")
