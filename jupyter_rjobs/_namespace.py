"""Which notebook variables a process or remote job needs, and sending them (PowerShell's ``$using:``).

A cell's free names are the names it reads before it assigns them, plus the globals its
functions, lambdas and comprehensions read. Those that exist in the user namespace are
sent; ``push`` names them explicitly instead, and an empty ``push`` sends none.
"""

from __future__ import annotations

import ast
import re
import symtable
import types
from typing import Any, Iterable, Mapping, Sequence

from ._agent import dumps_value
from ._errors import UnsendableVariableError, UsageProblem

__all__ = ["free_names", "capture_variables", "serialize_variables"]

# IPython's own entries in the user namespace: never sent.
_IPYTHON_NAMES = frozenset(
    {"In", "Out", "get_ipython", "exit", "quit", "_", "__", "___", "_i", "_ii", "_iii", "_ih", "_oh", "_dh"}
)
_IPYTHON_PATTERN = re.compile(r"^(_i?\d+|__\w*__)$")
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def free_names(code: str) -> list[str]:
    """Names ``code`` needs from outside, in the order it first needs them."""
    tree = ast.parse(code)
    nested = _nested_scope_globals(code)
    assigned: set[str] = set()
    free: dict[str, None] = {}
    for statement in tree.body:
        loads, stores = _statement_names(statement)
        end = getattr(statement, "end_lineno", statement.lineno) or statement.lineno
        for lineno, names in nested:
            if statement.lineno <= lineno <= end:
                loads.extend(names)
        for name in loads:
            if name not in assigned:
                free.setdefault(name, None)
        assigned.update(stores)
    return [name for name in free if not _IPYTHON_PATTERN.match(name) and name not in _IPYTHON_NAMES]


def _statement_names(statement: ast.stmt) -> tuple[list[str], set[str]]:
    """Names one top-level statement reads and binds, outside its nested function bodies."""
    loads: list[str] = []
    stores: set[str] = set()
    bound_in_comprehensions: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, _SCOPES):
            if not isinstance(node, ast.Lambda):
                stores.add(node.name)
                for decorator in node.decorator_list:
                    visit(decorator)
            for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
                visit(default)
            return  # the body runs later: its globals come from the symbol table
        if isinstance(node, ast.ClassDef):
            stores.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                stores.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.comprehension):
            for target in ast.walk(node.target):
                if isinstance(target, ast.Name):
                    bound_in_comprehensions.add(target.id)
        elif isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                loads.append(node.id)
            else:
                stores.add(node.id)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(statement)
    return [name for name in loads if name not in bound_in_comprehensions], stores


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


def is_module(value: Any) -> bool:
    return isinstance(value, types.ModuleType)
