"""Static gate: a cheap AST check of a candidate's source before it gets any GPU time.

The gate rejects the constructs that known evaluation hacks need: catching errors to fall back
to the reference op, subclassing the reference or ``torch.Tensor``, patching timers or torch,
reaching interpreter internals, exiting or starting processes and threads, switching CUDA streams
or capturing graphs, touching the RNG or precision settings, and persisting-L2 or timer tricks in
CUDA sources. It also reports what the candidate declares: whether it uses Triton or CuPy, which
custom kernels it defines and its ``SEARCH_SPACE`` (README, "How the evaluator decides").

It is a filter, not a proof. Python is too dynamic for a syntactic check to be complete, so the
sandbox, the correctness checks and the timing cross-checks still stand behind it. The rules lean
towards rejecting: an honest kernel needs none of these constructs. The rules themselves (what is
banned and why) are tables in :mod:`evaluator_worker.gate_rules`; this module walks the source.
Only the standard library is imported, so the controller can run the gate without torch or a GPU.
"""

from __future__ import annotations

import ast
import dataclasses

from evaluator_worker import parsing
from evaluator_worker.gate_rules import (
    ALLOWED_NAMES,
    BANNED_BUILTINS,
    BANNED_MODULES,
    BANNED_NAMES,
    BANNED_PREFIXES,
    CUPY_KERNEL_CTORS,
    DEFAULT_ROOTS,
    ESCAPE_ATTRS,
    ESCAPE_NAMES,
    KERNEL_DECORATORS,
    L2_TOKENS,
    MUTATORS,
    TENSOR_BASES,
    TENSOR_HOOKS,
    TIMER_TOKENS,
    WHY_CATCH,
    WHY_ENV,
    WHY_ESCAPE,
    WHY_HIDDEN,
    WHY_L2,
    WHY_PATCH,
    WHY_PRECISION,
    WHY_SUBCLASS,
    WHY_TIMER,
)


@dataclasses.dataclass
class GateReport:
    """Outcome of the static gate for one candidate source.

    Attributes
    ----------
    ok : bool
        False when any rule fired or the source does not parse.
    reasons : list[str]
        One ``"line N: what (forbidden: why)"`` per violation, deduplicated, in the order found.
    syntax_error : str or None
        ``"line N: message"`` when the source does not parse (then ``ok`` is False).
    uses_triton : bool
        The source imports ``triton`` or one of its submodules.
    uses_cupy : bool
        The source imports ``cupy`` (or ``cupyx``).
    custom_kernels : list[str]
        Names of Triton-decorated functions and of variables holding CuPy kernels.
    search_space : dict or None
        Literal value of a module-level ``SEARCH_SPACE = {...}``; None if absent or not literal.
    """

    ok: bool
    reasons: list[str]
    syntax_error: str | None
    uses_triton: bool
    uses_cupy: bool
    custom_kernels: list[str]
    search_space: dict | None

    @property
    def claims_custom_kernels(self) -> bool:
        """Whether the candidate defines its own kernels (the profiler checks it runs them)."""
        return bool(self.custom_kernels)


def check_source(source: str, filename: str = "<candidate>") -> GateReport:
    """Run the static gate on a candidate's source text; never executes it.

    Parameters
    ----------
    source : str
        The candidate module's Python source.
    filename : str
        Name used in parser messages.

    Returns
    -------
    GateReport
        ``ok`` is True only when the source parses and no rule fired.
    """
    try:
        tree = parsing.parse_shared(source, filename=filename)
    except SyntaxError as exc:
        message = f"line {exc.lineno or 1}: {exc.msg}"
        return GateReport(False, [message], message, False, False, [], None)
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        message = f"line 1: cannot parse ({detail})"
        return GateReport(False, [message], message, False, False, [], None)

    visitor = _Visitor(_import_aliases(tree))
    try:
        visitor.visit(tree)
    except RecursionError:
        # Fail closed: a source too deep to walk is not checked, so it is not let through.
        visitor.flag(tree, "source nested too deeply to check", WHY_HIDDEN)
    search_space = _search_space(tree, visitor)
    reasons = list(dict.fromkeys(visitor.reasons))
    return GateReport(
        ok=not reasons,
        reasons=reasons,
        syntax_error=None,
        uses_triton=visitor.uses_triton,
        uses_cupy=visitor.uses_cupy,
        custom_kernels=list(dict.fromkeys(visitor.kernels)),
        search_space=search_space,
    )


def _import_aliases(tree: ast.Module) -> dict[str, str]:
    """Map every name bound by an import anywhere in the module to the dotted name it stands for.

    ``import torch as th`` gives ``th -> torch``, ``from torch.cuda import Stream`` gives
    ``Stream -> torch.cuda.Stream``. Scopes are ignored: the gate is a filter, not a resolver.
    """
    aliases: dict[str, str] = {}
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if alias.name != "*":
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


_BLOCKS = (ast.stmt, ast.excepthandler, ast.match_case)


def _statements(tree: ast.Module) -> list[ast.AST]:
    """Every statement of the module (and its except handlers and match cases), nested ones too.

    The same nodes, in the same breadth-first order, that ``ast.walk`` yields of those kinds:
    expressions cannot hold statements, so only lists of statements and blocks are descended into,
    which skips the expressions that make up most of a tree. Later imports of a name win, as they
    did when the aliases were collected over ``ast.walk``.
    """
    queue: list[ast.AST] = [tree]
    for node in queue:  # the list grows while it is read: a breadth-first queue
        for field in node._fields:
            value = getattr(node, field, None)
            if isinstance(value, list):
                queue.extend(item for item in value if isinstance(item, _BLOCKS))
    return queue[1:]


def _search_space(tree: ast.Module, visitor: _Visitor) -> dict | None:
    """Literal value of the last module-level ``SEARCH_SPACE`` assignment, or None."""
    value = None
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets = [stmt.target]
        else:
            continue
        if not any(isinstance(t, ast.Name) and t.id == "SEARCH_SPACE" for t in targets):
            continue
        try:
            value = ast.literal_eval(stmt.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = None
        if not isinstance(value, dict):
            value = None
            visitor.flag(
                stmt,
                "SEARCH_SPACE is not a literal dict",
                "the search reads it without running the candidate",
            )
    return value


class _Visitor(ast.NodeVisitor):
    """Walks a module once, collecting rule violations and what the candidate declares."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases
        self.reasons: list[str] = []
        self.kernels: list[str] = []
        self.uses_triton = False
        self.uses_cupy = False
        self._owners: list[str] = []  # enclosing assignment targets / functions, to name kernels

    def visit(self, node: ast.AST) -> None:
        """Call ``visit_<NodeClass>`` (or ``generic_visit``), looked up once per node class.

        Same dispatch as :meth:`ast.NodeVisitor.visit` and the same frames per node (this method,
        then the handler), so a source too deep to walk fails at the same depth as it did there.
        """
        try:
            handler = _DISPATCH[node.__class__]
        except KeyError:
            name = "visit_" + node.__class__.__name__
            handler = _DISPATCH[node.__class__] = getattr(_Visitor, name, _Visitor.generic_visit)
        handler(self, node)

    def generic_visit(self, node: ast.AST) -> None:
        """Visit the child nodes of ``node`` in field order, as :class:`ast.NodeVisitor` does."""
        leaf = True
        for field in node._fields:
            value = getattr(node, field, None)  # a missing field is skipped, as iter_fields does
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        leaf = False
                        self.visit(item)
            elif isinstance(value, ast.AST):
                leaf = False
                self.visit(value)
        if leaf:
            # NodeVisitor's iter_fields generator costs a frame even at a leaf (Load, Add, ...):
            # spend it too, so the depth that raises RecursionError stays what it was.
            _one_frame()

    def flag(self, node: ast.AST, what: str, why: str) -> None:
        """Record one violation at ``node``'s line."""
        self.reasons.append(f"line {getattr(node, 'lineno', 1)}: {what} (forbidden: {why})")

    # -- name resolution ---------------------------------------------------------------------

    def _literal_getattr(self, node: ast.AST) -> str | None:
        """The attribute name of ``getattr(obj, "name")``, else None."""
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and "getattr" not in self.aliases
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            return node.args[1].value
        return None

    def _root(self, node: ast.AST) -> tuple[ast.AST, list[str]]:
        """Strip attributes and literal getattr calls off ``node``; parts come outermost first."""
        parts: list[str] = []
        while True:
            if isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            elif (attr := self._literal_getattr(node)) is not None:
                parts.append(attr)
                node = node.args[0]
            else:
                return node, parts

    def _resolve(self, node: ast.AST) -> str | None:
        """Dotted name that an expression like ``th.cuda.Stream`` stands for, or None."""
        root, parts = self._root(node)
        if not isinstance(root, ast.Name):
            return None
        base = self.aliases.get(root.id) or DEFAULT_ROOTS.get(root.id)
        if base is None:
            return None
        return ".".join([base, *reversed(parts)])

    def _check_dotted(self, node: ast.AST, name: str, verb: str = "uses") -> bool:
        """Flag a resolved dotted name if it or a parent is banned; True when something fired."""
        if name in ALLOWED_NAMES:
            return False
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            shown = name if verb == "imports" else prefix
            if prefix in BANNED_MODULES:
                note = BANNED_MODULES[prefix]
                self.flag(
                    node,
                    f"{verb} '{shown}'",
                    f"candidates may not use {prefix}" + (f"; {note}" if note else ""),
                )
                return True
            if prefix in BANNED_NAMES:
                self.flag(node, f"{verb} '{shown}'", BANNED_NAMES[prefix])
                return True
        for prefix, why in BANNED_PREFIXES.items():
            if name.startswith(prefix):
                # Report the whole component that matched (``os.execv``), not its children.
                shown = name if verb == "imports" else ".".join(parts[: prefix.count(".") + 1])
                self.flag(node, f"{verb} '{shown}'", why)
                return True
        return False

    # -- statements --------------------------------------------------------------------------

    def visit_Try(self, node: ast.Try) -> None:
        self.flag(node, "try statement", WHY_CATCH)
        self.generic_visit(node)

    visit_TryStar = visit_Try

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._note_library(alias.name)
            self._check_dotted(node, alias.name, "imports")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return  # a candidate is one file; a relative import fails at load time anyway
        self._note_library(node.module)
        if self._check_dotted(node, node.module, "imports"):
            return
        for alias in node.names:
            if alias.name == "*":
                self.flag(node, f"'from {node.module} import *'", WHY_HIDDEN)
            else:
                self._check_dotted(node, f"{node.module}.{alias.name}", "imports")

    def _note_library(self, module: str) -> None:
        root = module.split(".")[0]
        self.uses_triton |= root == "triton"
        self.uses_cupy |= root in ("cupy", "cupyx")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            resolved = self._resolve(base)
            if (
                (isinstance(base, ast.Name) and base.id in ("Model", "Tensor"))
                or (isinstance(base, ast.Attribute) and base.attr == "Model")
                or resolved in TENSOR_BASES
            ):
                self.flag(
                    node, f"class '{node.name}' subclasses '{ast.unparse(base)}'", WHY_SUBCLASS
                )
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if node.name in TENSOR_HOOKS:
            self.flag(node, f"defines '{node.name}'", WHY_SUBCLASS)
        if node.name in ("__exit__", "__aexit__"):
            # A context manager whose __exit__ returns True swallows errors like try/except.
            self.flag(node, f"defines '{node.name}'", WHY_CATCH)
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if self._resolve(target) in KERNEL_DECORATORS:
                self.kernels.append(node.name)
        self._owners.append(node.name)
        self.generic_visit(node)
        self._owners.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign | ast.AnnAssign) -> None:
        target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        # ast.unparse of a plain name is the name itself; anything else is still unparsed here.
        self._owners.append(target.id if type(target) is ast.Name else ast.unparse(target))
        self.generic_visit(node)
        self._owners.pop()

    visit_AnnAssign = visit_Assign

    # -- expressions -------------------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id not in self.aliases:
            if func.id == "getattr":
                self._check_getattr(node)
                return
            if func.id == "type" and len(node.args) == 3:
                self.flag(node, "type() with three arguments", WHY_HIDDEN)
        name = self._resolve(func)
        if name is not None:
            if name.startswith("torch.backends."):
                self.flag(node, f"calls '{name}'", WHY_PRECISION)
            owner, _, method = name.rpartition(".")
            if owner == "os.environ" and method in MUTATORS:
                self.flag(node, f"calls '{name}'", WHY_ENV)
            if name in CUPY_KERNEL_CTORS:
                self.kernels.append(self._owners[-1] if self._owners else f"<line {node.lineno}>")
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Attribute)
            and func.value.attr == "__dict__"
            and func.attr in MUTATORS
        ):
            self.flag(node, f"calls '.__dict__.{func.attr}'", WHY_ESCAPE)
        self.generic_visit(node)

    def _check_getattr(self, node: ast.Call) -> None:
        attr = self._literal_getattr(node)
        if attr is None:
            self.flag(node, "getattr with a non-literal attribute name", WHY_HIDDEN)
            for child in [*node.args, *node.keywords]:
                self.visit(child)
            return
        if attr.startswith("__") and attr.endswith("__"):
            self.flag(node, f"getattr of dunder attribute '{attr}'", WHY_ESCAPE)
        # getattr(obj, "name") is obj.name: run the attribute rules on that spelling.
        self.visit(ast.copy_location(ast.Attribute(node.args[0], attr, ast.Load()), node))
        for child in [*node.args[2:], *node.keywords]:
            self.visit(child)

    def visit_Name(self, node: ast.Name) -> None:
        if not isinstance(node.ctx, ast.Load):
            return  # rebinding a name only changes the candidate's own namespace
        if node.id in self.aliases:
            pass  # a name bound by an import was checked at its import statement
        elif node.id in BANNED_BUILTINS:
            self.flag(node, f"uses '{node.id}'", BANNED_BUILTINS[node.id])
        elif node.id == "getattr":
            self.flag(node, "uses 'getattr' other than as a direct call", WHY_HIDDEN)
        if node.id in ESCAPE_NAMES:
            self.flag(node, f"uses '{node.id}'", WHY_ESCAPE)
        if node.id in TENSOR_HOOKS:
            self.flag(node, f"uses '{node.id}'", WHY_SUBCLASS)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self._resolve(node)
        if name in ALLOWED_NAMES:
            return
        if node.attr in ESCAPE_ATTRS:
            self.flag(node, f"accesses '.{node.attr}'", WHY_ESCAPE)
        if node.attr in TENSOR_HOOKS:
            self.flag(node, f"uses '{node.attr}'", WHY_SUBCLASS)
        if node.attr == "__dict__" and self._resolve(node.value) is not None:
            # A module's __dict__ is vars(module): writes through it patch the module.
            self.flag(node, f"accesses '{name}'", WHY_PATCH)
        if isinstance(node.ctx, ast.Load):
            if name is not None:
                self._check_dotted(node, name)
        else:
            self._check_store(node, node)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if not isinstance(node.ctx, ast.Load):
            self._check_store(node.value, node)  # os.environ["X"] = ..., torch.__dict__["f"] = ...
        self.generic_visit(node)

    def _check_store(self, target: ast.AST, node: ast.AST) -> None:
        """Flag an assignment or ``del`` that writes into ``target`` (an attribute or container)."""
        verb = "deletes" if isinstance(node.ctx, ast.Del) else "assigns to"
        if isinstance(target, ast.Attribute) and target.attr in ("__dict__", "__class__"):
            self.flag(node, f"{verb} '.{target.attr}'", WHY_ESCAPE)
            return
        root, _ = self._root(target)
        if not isinstance(root, ast.Name):
            return
        if root.id not in self.aliases and root.id not in DEFAULT_ROOTS:
            return  # self.x = ..., out.data = ...: the candidate's own objects
        name = self._resolve(target) or ast.unparse(target)
        if name == "os.environ":
            self.flag(node, f"{verb} os.environ", WHY_ENV)
        else:
            self.flag(node, f"{verb} '{name[:80]}'", WHY_PATCH)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(value, str):
            return
        if value in ESCAPE_ATTRS or value in TENSOR_HOOKS:
            # The name as data, e.g. operator.attrgetter("__globals__"), is the same escape.
            self.flag(node, f"names the attribute '{value}'", WHY_ESCAPE)
        for token in L2_TOKENS:
            if token in value:
                self.flag(node, f"CUDA source mentions '{token}'", WHY_L2)
        for token in TIMER_TOKENS:
            if token in value:
                self.flag(node, f"asm reads timer register '{token}'", WHY_TIMER)


_DISPATCH: dict[type, object] = {}  # node class -> the _Visitor function that handles it


def _one_frame() -> None:
    """Do nothing one call deeper (see :meth:`_Visitor.generic_visit`)."""
