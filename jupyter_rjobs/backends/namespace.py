"""Which notebook variables a process or remote job needs, and sending them (PowerShell's ``$using:``).

A cell's free names are the names it reads before it assigns them, plus the globals its
functions, lambdas and comprehensions read. Those that exist in the user namespace are
sent; ``push`` names them explicitly instead, and an empty ``push`` sends none.
"""

from __future__ import annotations

import ast
import functools
import re
import symtable
from typing import Any, Iterable, Mapping, Sequence

from jupyter_rjobs.agent.values import dumps_value
from jupyter_rjobs.core.errors import UnsendableVariableError, UsageProblem

__all__ = ["free_names", "capture_variables", "serialize_variables"]

# IPython's own entries in the user namespace: never sent.
_IPYTHON_NAMES = frozenset(
    {"In", "Out", "get_ipython", "exit", "quit", "_", "__", "___", "_i", "_ii", "_iii", "_ih", "_oh", "_dh"}
)
_IPYTHON_PATTERN = re.compile(r"^(_i?\d+|__\w*__)$")


def free_names(code: str) -> list[str]:
    """Names ``code`` needs from outside, in the order it first needs them."""
    return list(_free_names(code))


@functools.lru_cache(maxsize=256)
def _free_names(code: str) -> tuple[str, ...]:
    tree = ast.parse(code)
    nested = _nested_scope_globals(code)
    reader = _OrderedReader()
    for statement in tree.body:
        reader.visit(statement)
        end = getattr(statement, "end_lineno", statement.lineno) or statement.lineno
        for lineno, names in nested:  # function bodies run later: what they read, if not bound by then
            if statement.lineno <= lineno <= end:
                reader.read_all(names)
    return tuple(n for n in reader.free if not _IPYTHON_PATTERN.match(n) and n not in _IPYTHON_NAMES)


class _OrderedReader(ast.NodeVisitor):
    """Walks top-level code in the order it runs, noting names read before they are bound."""

    def __init__(self) -> None:
        self.bound: set[str] = set()
        self.free: dict[str, None] = {}
        self._comprehension_names: list[set[str]] = []

    def read(self, name: str) -> None:
        if name not in self.bound and not any(name in names for names in self._comprehension_names):
            self.free.setdefault(name, None)

    def read_all(self, names: list[str]) -> None:
        for name in names:
            self.read(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.read(node.id)
        elif self._comprehension_names:
            self._comprehension_names[-1].add(node.id)
        else:
            self.bound.add(node.id)

    def _value_then_targets(self, node: Any) -> None:
        if node.value is not None:
            self.visit(node.value)
        for target in getattr(node, "targets", None) or [node.target]:
            self.visit(target)

    visit_Assign = visit_AnnAssign = visit_NamedExpr = _value_then_targets

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self.read(node.target.id)
        self._value_then_targets(node)

    def visit_For(self, node: Any) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for child in [*node.body, *node.orelse]:
            self.visit(child)

    visit_AsyncFor = visit_For

    def _comprehension(self, node: Any) -> None:
        self._comprehension_names.append(set())
        for generator in node.generators:
            self.visit(generator.iter)
            self.visit(generator.target)
            for condition in generator.ifs:
                self.visit(condition)
        for part in ("elt", "key", "value"):
            if hasattr(node, part):
                self.visit(getattr(node, part))
        self._comprehension_names.pop()

    visit_ListComp = visit_SetComp = visit_GeneratorExp = visit_DictComp = _comprehension

    def _scope(self, node: Any) -> None:
        for decorator in getattr(node, "decorator_list", []):
            self.visit(decorator)
        defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
        for default in defaults:
            self.visit(default)
        if not isinstance(node, ast.Lambda):
            self.bound.add(node.name)  # the body runs later: its globals come from the symbol table

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scope

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expression in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expression)
        self.bound.add(node.name)

    def visit_Import(self, node: Any) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.bound.add((alias.asname or alias.name).split(".")[0])

    visit_ImportFrom = visit_Import


def _nested_scope_globals(code: str) -> list[tuple[int, list[str]]]:
    """(line, global names read) for every function, lambda and class scope in ``code``."""
    found: list[tuple[int, list[str]]] = []

    def walk(table: symtable.SymbolTable) -> None:
        for child in table.get_children():
            names = [s.get_name() for s in child.get_symbols() if s.is_global() and s.is_referenced()]
            found.append((child.get_lineno(), names))
            walk(child)

    walk(symtable.symtable(code, "<cell>", "exec"))
    return found


def capture_variables(
    code: str, namespace: Mapping[str, Any] | None, push: Sequence[str] | None
) -> dict[str, Any]:
    """The variables to send: ``push=None`` finds them, a list names them, ``[]`` sends none."""
    namespace = namespace or {}
    if push is None:
        return {name: namespace[name] for name in free_names(code) if name in namespace}
    missing = [name for name in push if name not in namespace]
    if missing:
        raise UsageProblem(
            f"--push names {', '.join(map(repr, missing))}, which the notebook does not have; define it first or leave it out"
        )
    return {name: namespace[name] for name in push}


def serialize_variables(
    values: Mapping[str, Any], where: str = "a process job"
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Frame specs and buffers for ``values``; an unsendable one raises naming it."""
    specs: list[dict[str, Any]] = []
    buffers: list[Any] = []
    for name, value in values.items():
        try:
            fmt, value_buffers = dumps_value(value)
        except Exception as exc:  # noqa: BLE001 - pickle and dill raise many kinds
            raise UnsendableVariableError(name, f"{type(exc).__name__}: {exc}", where) from None
        specs.append({"name": name, "format": fmt, "nbuf": len(value_buffers)})
        buffers.extend(value_buffers)
    return specs, buffers


def parse_names(text: str | Iterable[str] | None) -> list[str] | None:
    """``"a, b"`` or ``["a", "b"]`` to a list of identifiers (None stays None)."""
    if text is None:
        return None
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise UsageProblem(f"{', '.join(map(repr, bad))} is not a variable name; give --push as NAME,NAME")
    return names

