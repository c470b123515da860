"""The %rjob magics: a thin layer over JobManager. Every subcommand parses its arguments,
calls the manager, and shows the result; bad input is a one-line UsageError."""

from __future__ import annotations

import dataclasses
import keyword
import re
import shlex
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Int

from jupyter_rjobs.backends.base import registered_backends
from jupyter_rjobs.backends.namespace import parse_names
from jupyter_rjobs.core.errors import RJobError
from jupyter_rjobs.core.job import Job, JobKind, JobState
from jupyter_rjobs.core.manager import JobManager
from jupyter_rjobs.core.table import JobDetails, JobTable, LeftJobTable
from jupyter_rjobs.ipython.cluster_magics import CLUSTER_SUBCOMMANDS, ClusterMagics
from jupyter_rjobs.ipython.extension import Renderer
from jupyter_rjobs.ipython.host_magics import HOST_SUBCOMMANDS, HostMagics
from jupyter_rjobs.ipython.session_magics import SESSION_SUBCOMMANDS, SessionMagics

__all__ = ["RJobMagics"]

_STATES = ", ".join(s.value for s in JobState)


@magic_arguments(name="rjob start")
@argument("--thread", action="store_true", help="run in a thread of this kernel (Start-ThreadJob)")
@argument("--process", action="store_true", help="run in a separate local process; the default (Start-Job)")
@argument("--name", help="the job's name (default Job<Id>)")
@argument("--push", metavar="NAMES", help="send exactly these notebook variables to a process job: a,b")
@argument("--no-push", action="store_true", help="send no notebook variables")
@argument("--out", metavar="VAR", help="also store the Job object in this variable")
@argument("--no-card", action="store_true", help="show the job as the one-row table, not as a live card (see %%config RJobMagics.card)")
def _start_args() -> None:
    """Start the cell (or, in line form, the code after `--`) as a job; returns at once.

    `%%rjob start [options]` + cell, or `%rjob start [options] -- EXPRESSION`.
    Process and remote jobs get the notebook variables their code reads (PowerShell's $using:).
    Several hosts make one parent job with a child per host. The options after --out are those
    of the registered kinds of job (each backend declares its own); they choose the kind.
    """


_start_option_fields: dict[str, dataclasses.Field[Any]] = {}  # argparse dest -> the backend option it sets


def _add_backend_options() -> None:
    """Offer every registered backend's options as `start` arguments (once each; a flag two
    backends share is one argument). Refreshes the help text when something was added."""
    parser = _start_args.parser  # made by @magic_arguments
    added = False
    for entry in registered_backends():
        for each in dataclasses.fields(entry.options_type):
            flag = each.metadata.get("flag")
            if not flag or each.name in _start_option_fields:
                continue
            _start_option_fields[each.name] = each
            kwargs: dict[str, Any] = {"dest": each.name, "default": None, "help": each.metadata.get("help")}
            if each.default is False and each.metadata.get("bare") is None:
                kwargs.update(action="store_true", default=None)
            else:
                kwargs.update(metavar=each.metadata.get("metavar"), choices=each.metadata.get("choices"))
                if each.metadata.get("bare") is not None:
                    kwargs.update(nargs="?", const="")
            parser.add_argument(flag, **kwargs)
            added = True
    if added:
        _start_args.__doc__ = parser.format_help()


def _bare_flags() -> re.Pattern[str]:
    """The flags whose value is optional: alone they never take the next word as their value."""
    flags = [f.metadata["flag"] for f in _start_option_fields.values() if f.metadata.get("bare") is not None]
    flags.append("--accept-new-host")  # `session new` and `invoke` have it too
    return re.compile(r"(?<!\S)(" + "|".join(re.escape(f) for f in flags) + r")(?=\s|$)")


def _given_options(args: Any) -> dict[str, Any]:
    """The backend options the user gave (those left out are not passed: each has its default)."""
    given: dict[str, Any] = {}
    for name, each in _start_option_fields.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        bare = each.metadata.get("bare")
        given[name] = (bare if value == "" else value) if bare is not None else value
    return given


@magic_arguments(name="rjob list")
@argument("jobs", nargs="*", help="ids or names (wildcards allowed)")
@argument("--state", help=f"only jobs in this state ({_STATES})")
@argument("--has-more-data", action="store_true", help="only jobs with output not yet received")
@argument("--kind", choices=["thread", "process", "remote", "dask"], help="only jobs of this kind")
@argument("--include-children", action="store_true", help="list child jobs too")
@argument("--all", action="store_true", help="also the remote jobs left on hosts by other kernels (from the local registry),"
          " and the detached jobs on the Dask clusters this kernel is connected to")
@argument("--cluster", metavar="C", help="with --all: also look on this Dask cluster (a name or scheduler address)")
def _list_args() -> None:
    """List jobs (Get-Job)."""


@magic_arguments(name="rjob show")
@argument("job", help="an id or name")
def _show_args() -> None:
    """Every property of one job: times, full command, children, error and its traceback."""


@magic_arguments(name="rjob wait")
@argument("jobs", nargs="*", help="ids or names (default: all jobs)")
@argument("--any", action="store_true", help="return when any one job has finished")
@argument("--timeout", type=float, metavar="S", help="give up after S seconds and say which jobs still run")
def _wait_args() -> None:
    """Block until the jobs finish (Wait-Job); lists the finished ones and names those still running."""


@magic_arguments(name="rjob receive")
@argument("jobs", nargs="*", help="ids or names (default: all jobs)")
@argument("--keep", action="store_true", help="leave the output to be received again (Receive-Job -Keep)")
@argument("--wait", action="store_true", help="stream output as it comes until the jobs end")
@argument("--auto-remove", action="store_true", help="with --wait: remove the jobs when they have ended")
@argument("--out", metavar="VAR", help="also store the value (a dict for several jobs) in this variable")
@argument("--host", metavar="HOST", help="only the child job that runs on this host")
def _receive_args() -> None:
    """Show the output produced since the last receive, in order, and return the job's value as Out
    (a dict of values for several jobs)."""


@magic_arguments(name="rjob stop")
@argument("jobs", nargs="+", help="ids or names")
def _stop_args() -> None:
    """Stop jobs (Stop-Job): Stopping, then Stopped; a process job's whole process tree ends."""


@magic_arguments(name="rjob remove")
@argument("jobs", nargs="*", help="ids or names")
@argument("--force", action="store_true", help="stop running jobs first")
@argument("--state", help=f"remove the jobs in this state ({_STATES})")
def _remove_args() -> None:
    """Forget jobs and their output (Remove-Job); a running job needs --force."""


@magic_arguments(name="rjob panel")
@argument("--interval", type=float, metavar="S", help="redraw at most every S seconds (default 0.25 in a notebook, 1 in a terminal)")
def _panel_args() -> None:
    """A live view of every job. In a notebook: a widget panel with Receive, Stop and Remove,
    a state filter and progress bars. In a terminal: the job table, redrawn as jobs change, until Ctrl-C."""


_add_backend_options()

_SUBCOMMANDS: dict[str, Callable[[], None]] = {
    "start": _start_args,
    "list": _list_args,
    "show": _show_args,
    "wait": _wait_args,
    "receive": _receive_args,
    "stop": _stop_args,
    "remove": _remove_args,
    **SESSION_SUBCOMMANDS,
    "panel": _panel_args,
    **HOST_SUBCOMMANDS,
    **CLUSTER_SUBCOMMANDS,
}


def _usage() -> str:
    parts = [
        "Run cells as jobs in a thread, another process or on SSH hosts, while the notebook stays free.",
        "",
        "Subcommands: " + ", ".join(_SUBCOMMANDS) + ". Jobs are named by id or name, several at once.",
    ]
    for func in _SUBCOMMANDS.values():
        parts += ["", "-" * 70, func.__doc__ or ""]
    return "\n".join(parts)


def _parse(func: Callable[[], None], line: str) -> Any:
    """Arguments read the way a shell reads them (shlex: quotes group words and are removed);
    options may come before, between or after the positional arguments."""
    line = _bare_flags().sub(r"\1=", line)  # values only with `=`: never eat the next word
    try:
        return func.parser.parse_intermixed_args(shlex.split(line))  # type: ignore[attr-defined]
    except UsageError:
        raise
    except ValueError as exc:  # unbalanced quotes, say
        raise UsageError(f"cannot read the arguments ({exc}); see %rjob?") from None


def _variable_name(value: str | None) -> str | None:
    """--out's variable: refused before anything starts unless it is a Python name."""
    if value is not None and (not value.isidentifier() or keyword.iskeyword(value)):
        raise UsageError(f"--out {value!r} is not a Python variable name; use letters, digits and _, not starting with a digit")
    return value


@magics_class
class RJobMagics(SessionMagics, HostMagics, ClusterMagics, Magics):
    card = Bool(
        True,
        help="In a notebook, %%rjob start shows its job as a live card (state, progress, the last lines of "
        "output, Receive/Stop/Remove) that updates in place; False: the one-row table. `--no-card` is the same for one job.",
    ).tag(config=True)
    card_lines = Int(10, help="How many of the last lines of output a job card shows.").tag(config=True)

    def __init__(self, shell: Any, manager: JobManager) -> None:
        super().__init__(shell)
        self.manager = manager

    @line_cell_magic
    def rjob(self, line: str, cell: str | None = None) -> Any:
        subcommand, _, rest = line.strip().partition(" ")
        handler = getattr(self, f"_do_{subcommand}", None)
        if not subcommand or handler is None:
            known = ", ".join(_SUBCOMMANDS)
            raise UsageError(f"unknown %rjob subcommand {subcommand!r}; use one of: {known} (see %rjob?)")
        if cell is not None and subcommand not in ("start", "invoke"):
            raise UsageError(f"%%rjob {subcommand} takes no cell; only %%rjob start and %%rjob invoke run a cell")
        if subcommand not in ("start", "invoke"):  # their code after `--` is Python, where # may be inside a string
            rest = _strip_comment(rest)
        try:
            return handler(rest.strip(), cell)
        except RJobError as exc:
            raise UsageError(str(exc)) from None
        except ValueError as exc:  # an unknown state or kind name
            raise UsageError(str(exc)) from None

    rjob.__doc__ = _usage()

    # -- subcommands ------------------------------------------------------------------
    def _do_start(self, rest: str, cell: str | None) -> Job:
        _add_backend_options()  # backends registered since (entry points, a test's toy backend)
        args, code = _parse_with_code(_start_args, rest, cell, "start", "%rjob start -- EXPRESSION")
        if args.thread and args.process:
            raise UsageError("choose one of --thread and --process")
        if args.push is not None and args.no_push:
            raise UsageError("choose one of --push NAMES and --no-push")
        kind = JobKind.THREAD if args.thread else JobKind.PROCESS if args.process else None
        _variable_name(args.out)
        push = [] if args.no_push else parse_names(args.push)
        job: Job = self.manager.start(code, kind, name=args.name, push=push, namespace=self.shell.user_ns, **_given_options(args))
        if args.out:
            self.shell.user_ns[args.out] = job
        if self.card and not args.no_card and _is_kernel(self.shell):
            from jupyter_rjobs.ipython.card_display import want_card

            want_card(self.shell, job, self.manager, max(0, self.card_lines))
        return job

    def _do_list(self, rest: str, cell: str | None) -> Any:
        args = _parse(_list_args, rest)
        if args.cluster is not None and not args.all:
            raise UsageError("--cluster goes with --all: %rjob list --all --cluster C")
        if args.all:
            from IPython.display import display

            if args.cluster is not None:
                self.manager.clusters.find(args.cluster)
            display(self._do_list(_without_flag(rest, "--all", "--cluster"), cell))
            left = LeftJobTable(self.manager.left_jobs(), note="Jobs left on hosts by other kernels: `%rjob connect HOST` adopts them.")
            on_clusters = self.manager.left_cluster_jobs()
            if not on_clusters:
                return left
            display(left)
            return LeftJobTable(on_clusters, note="Detached jobs on Dask clusters: `%rjob connect --cluster C` adopts them.")
        jobs = self.manager.list(
            args.jobs or None,
            state=args.state,
            has_more_data=True if args.has_more_data else None,
            kind=args.kind,
            include_children=args.include_children,
        )
        return JobTable(jobs, include_children=args.include_children)

    def _do_show(self, rest: str, cell: str | None) -> JobDetails:
        args = _parse(_show_args, rest)
        return JobDetails(self.manager.get(args.job))

    def _do_wait(self, rest: str, cell: str | None) -> JobTable:
        args = _parse(_wait_args, rest)
        result = self.manager.wait(args.jobs or None, any=args.any, timeout=args.timeout)
        note = ""
        if result.still_running:
            still = ", ".join(f"{j.id} ({j.name}, {j.state})" for j in result.still_running)
            if result.timed_out:
                note = f"Timed out after {args.timeout:g} s; still running: {still}"
            else:
                note = f"Still running: {still}"
        return JobTable(result, note=note)

    def _do_receive(self, rest: str, cell: str | None) -> Any:
        args = _parse(_receive_args, rest)
        _variable_name(args.out)
        if args.auto_remove and not args.wait:
            raise UsageError("--auto-remove needs --wait (the jobs must end before they are removed)")
        jobs = self.manager.resolve(args.jobs or None)
        leaves = [leaf for job in jobs for leaf in job.leaves()]
        if args.host:
            jobs = leaves = [leaf for leaf in leaves if leaf.location == args.host]
            if not jobs:
                raise UsageError(f"none of those jobs runs on {args.host!r}; see %rjob show JOB for its hosts")
        renderer = Renderer(self.shell, leaves, streaming=args.wait)
        if args.wait:
            records: Any = self.manager.follow(jobs, keep=args.keep)
        else:
            records = self.manager.iter_receive(jobs, keep=args.keep)  # a remote-cache spool a part at a time
        try:
            for record in records:
                renderer.render(record)
        except KeyboardInterrupt:
            print("\n(receive interrupted; the jobs keep running and nothing unseen was lost)")
        finally:
            renderer.finish()
        if args.auto_remove:
            self.manager.remove([j for j in jobs if j.state.finished])
        result = _values(leaves, renderer.values)
        if args.out:
            self.shell.user_ns[args.out] = result
        return result

    def _do_stop(self, rest: str, cell: str | None) -> JobTable:
        args = _parse(_stop_args, rest)
        jobs = self.manager.stop(args.jobs)
        stuck = [leaf for j in jobs for leaf in j.leaves() if leaf.state is JobState.Stopping]
        notes = [f"{j.label} ({_why_stopping(j)})" for j in stuck]
        return JobTable(jobs, note="Still stopping: " + "; ".join(notes) if notes else "")

    def _do_remove(self, rest: str, cell: str | None) -> None:
        args = _parse(_remove_args, rest)
        if not args.jobs and not args.state:
            raise UsageError("name the jobs to remove, or choose them with --state STATE")
        removed = self.manager.remove(args.jobs or None, force=args.force, state=args.state)
        if removed:
            print("Removed " + ", ".join(j.label for j in removed))
            for leaf in (leaf for j in removed for leaf in j.leaves()):
                left = getattr(leaf.runner, "left_on_host", "")
                if left:
                    print(f"{leaf.label}: {left}")
        else:
            print("No job matched; nothing was removed")

    def _do_panel(self, rest: str, cell: str | None) -> Any:
        args = _parse(_panel_args, rest)
        if args.interval is not None and not args.interval > 0:
            raise UsageError(f"--interval must be above 0 seconds, not {args.interval:g}; e.g. --interval 0.5")
        if not _is_kernel(self.shell):
            from jupyter_rjobs.ipython.live_table import live_table

            live_table(self.manager, interval=args.interval or 1.0)
            return None
        try:
            from jupyter_rjobs.ipython.panel import JobPanel
        except ImportError as exc:
            raise UsageError(f"the panel needs ipywidgets ({exc}); install it: pip install ipywidgets") from None
        return JobPanel(self.manager, interval=args.interval or 0.25, shell=self.shell)


def _without_flag(rest: str, *flags: str) -> str:
    """The arguments without these flags (and the value of one that takes one)."""
    words, out = shlex.split(rest), []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        name = word.split("=", 1)[0]
        if name in flags:
            skip = name == "--cluster" and "=" not in word
            continue
        out.append(word)
    return shlex.join(out)


def _why_stopping(job: Job) -> str:
    """Why a job is still Stopping after stop, by its kind."""
    note = getattr(job.runner, "stop_pending_note", "")
    if note:
        return str(note)
    if job.kind is JobKind.THREAD:
        return "a thread inside C code stops when it returns to Python"
    return "its processes have not ended yet"


def _is_kernel(shell: Any) -> bool:
    """A Jupyter kernel's shell (widgets have a front end); a terminal IPython has no kernel."""
    return getattr(shell, "kernel", None) is not None


def _parse_with_code(func: Callable[[], None], rest: str, cell: str | None, subcommand: str, line_form: str) -> tuple[Any, str]:
    """Options, and the code to run: the cell, or (line form) what follows `--`."""
    options, code = _split_code(rest)
    args = _parse(func, options)
    if cell is not None and code:
        raise UsageError("give the code either as the cell or after `--`, not both")
    code = cell if cell is not None else code
    if not code or not code.strip():
        raise UsageError(f"no code to run: use %%rjob {subcommand} with a cell, or {line_form}")
    return args, code


def _split_code(rest: str) -> tuple[str, str]:
    """Options before `--`, code after it (kept verbatim: it is Python, not shell words)."""
    if rest.startswith("-- ") or rest == "--":
        return "", rest[2:].strip()
    options, separator, code = rest.partition(" -- ")
    return (_strip_comment(options), code.strip()) if separator else (_strip_comment(rest), "")


def _strip_comment(line: str) -> str:
    """`%rjob receive crunch  # a note` -> `receive crunch`: a # that starts a word begins a comment."""
    return re.sub(r"(^|\s)#.*$", "", line)


def _values(leaves: list[Job], values: dict[int, Any]) -> Any:
    """One job: its value. Several: {name (or host, or id where names repeat): value}."""
    if len(leaves) == 1:
        return values.get(leaves[0].id)
    if not values:
        return None
    keys = [leaf.location if leaf.parent is not None else leaf.name for leaf in leaves]
    if len(set(keys)) != len(keys):
        keys = [str(leaf.id) for leaf in leaves]
    return {key: values[leaf.id] for key, leaf in zip(keys, leaves) if leaf.id in values}

