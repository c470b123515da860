"""The %rjob subcommands for sessions and re-attaching: session, invoke, enter, exit, connect,
disconnect. Mixed into RJobMagics; like the rest, a thin layer over JobManager."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from jupyter_rjobs.backends.namespace import parse_names
from jupyter_rjobs.backends.remote.options import ACCEPT_NEW_HELP
from jupyter_rjobs.core.errors import JobError, JobStoppedError
from jupyter_rjobs.core.job import Job
from jupyter_rjobs.core.sessions import SessionState
from jupyter_rjobs.core.table import JobTable, SessionTable
from jupyter_rjobs.ipython.extension import Renderer

__all__ = ["SessionMagics", "SESSION_SUBCOMMANDS", "ACCEPT_NEW_HELP", "accept_new_option"]



def accept_new_option(value: str | None) -> bool | str:
    """--accept-new-host's value: False (not given), True (bare: the targets), or the hosts named."""
    return False if value is None else value or True


@magic_arguments(name="rjob session")
@argument("action", choices=["new", "list", "close"], help="new HOST: open one; list; close S")
@argument("target", nargs="?", help="the host (new) or the session's id or name (close)")
@argument("--name", help="the session's name (default Session<Id>)")
@argument("--python", metavar="PATH", help="the Python to run on the host (default python3)")
@argument("--accept-new-host", nargs="?", const="", metavar="HOSTS", help=ACCEPT_NEW_HELP)
def _session_args() -> None:
    """Sessions: a lasting Python interpreter on a host that keeps its variables (New-PSSession,
    Get-PSSession, Remove-PSSession). `%rjob session new HOST --name s1`, `%rjob session list`,
    `%rjob session close s1`."""


@magic_arguments(name="rjob invoke")
@argument("--session", metavar="S", help="run in this session (its variables live on)")
@argument("--host", metavar="HOSTS", help="run on these hosts now: a,b,c; returns {host: value} for several")
@argument("--push", metavar="NAMES", help="send exactly these notebook variables: a,b")
@argument("--no-push", action="store_true", help="send no notebook variables")
@argument("--accept-new-host", nargs="?", const="", metavar="HOSTS", help=ACCEPT_NEW_HELP)
def _invoke_args() -> None:
    """Run the cell now in a session or on hosts, output live, value returned (Invoke-Command).
    Ctrl-C (interrupt the kernel) stops it."""


@magic_arguments(name="rjob enter")
@argument("session", help="the session's id or name")
def _enter_args() -> None:
    """Every following cell runs in the session, until `%rjob exit` (Enter-PSSession)."""


@magic_arguments(name="rjob exit")
def _exit_args() -> None:
    """Cells run here again (Exit-PSSession)."""


@magic_arguments(name="rjob connect")
@argument("target", nargs="?", help="a session, or a host: adopts every job this user left there. Default: every host the local registry knows")
@argument("--force", action="store_true", help="take over jobs another live kernel is attached to")
@argument("--python", metavar="PATH", help="the Python on the host (default python3)")
@argument("--cluster", metavar="C", help="adopt the detached jobs on this Dask cluster (its name or scheduler address)")
def _connect_args() -> None:
    """Re-attach (Connect-PSSession, Receive-PSSession): jobs and sessions let go of, and jobs left on a
    host by any kernel of this user; receive then gives everything nobody received."""


@magic_arguments(name="rjob disconnect")
@argument("target", help="a session, a host, or job ids/names")
def _disconnect_args() -> None:
    """Let go of a session, a host or jobs (Disconnect-PSSession): they keep running there, also after
    this kernel exits; `%rjob connect` re-attaches, here or in another kernel."""


SESSION_SUBCOMMANDS = {
    "session": _session_args,
    "invoke": _invoke_args,
    "enter": _enter_args,
    "exit": _exit_args,
    "connect": _connect_args,
    "disconnect": _disconnect_args,
}


class SessionMagics:
    """Mixed into RJobMagics (which provides shell, manager and the argument parsing)."""

    shell: Any
    manager: Any

    def _do_session(self, rest: str, cell: str | None) -> Any:
        from jupyter_rjobs.ipython.magics import _parse

        args = _parse(_session_args, rest)
        if args.action == "new":
            if not args.target:
                raise UsageError("name the host: %rjob session new HOST [--name NAME]")
            accept_new = accept_new_option(args.accept_new_host)
            session = self.manager.new_session(args.target, name=args.name, python=args.python, accept_new_host=accept_new)
            return SessionTable([session])
        if args.name or args.python or args.accept_new_host is not None:
            raise UsageError(f"--name, --python and --accept-new-host are for `session new`, not `session {args.action}`")
        if args.action == "list":
            sessions = [self.manager.refresh_session(s) if s.state is SessionState.Opened else s for s in self.manager.sessions()]
            return SessionTable(sessions)
        if not args.target:
            raise UsageError("name the session to close: %rjob session close S")
        from jupyter_rjobs.ipython.enter import entered_session

        session = self.manager.close_session(args.target)
        if entered_session(self.shell) is session:
            self._do_exit("", None)
        print(f"Closed {session.label} on {session.host}")
        return None

    def _do_invoke(self, rest: str, cell: str | None) -> Any:
        from jupyter_rjobs.ipython.magics import _parse_with_code

        args, code = _parse_with_code(_invoke_args, rest, cell, "invoke", "%rjob invoke --session S -- EXPRESSION")
        if bool(args.session) == bool(args.host):
            raise UsageError("give one of --session S or --host H[,H2]")
        if args.push is not None and args.no_push:
            raise UsageError("choose one of --push NAMES and --no-push")
        push = [] if args.no_push else parse_names(args.push)
        several = bool(args.host) and "," in args.host
        renderer = Renderer(self.shell, [], streaming=True)
        renderer.labelled = several

        def show(leaf: Job, record: Any) -> None:
            renderer.jobs.setdefault(leaf.id, leaf)
            renderer.render(record)

        try:
            return self.manager.invoke(
                code, session=args.session, host=args.host, namespace=self.shell.user_ns, push=push, on_record=show,
                accept_new_host=accept_new_option(args.accept_new_host),
            )
        except (JobError, JobStoppedError):
            return None  # its traceback (or stop) was shown with its output
        except KeyboardInterrupt:
            print("\n(interrupted: it was stopped)")
            return None
        finally:
            renderer.finish()

    def _do_enter(self, rest: str, cell: str | None) -> None:
        from jupyter_rjobs.ipython.enter import enter
        from jupyter_rjobs.ipython.magics import _parse

        args = _parse(_enter_args, rest)
        session = self.manager.get_session(args.session)
        if session.state is not SessionState.Opened:
            raise UsageError(f"{session.label} is {session.state}; {session.reason or 'connect it first: %rjob connect ' + session.name}")
        enter(self.shell, session)
        print(f"[{session.name}@{session.host}] Cells now run in {session.label} on {session.host}; `%rjob exit` comes back.")

    def _do_exit(self, rest: str, cell: str | None) -> None:
        from jupyter_rjobs.ipython.enter import leave
        from jupyter_rjobs.ipython.magics import _parse

        _parse(_exit_args, rest)
        session = leave(self.shell)
        if session is None:
            print("Not in a session: cells run here already.")
        else:
            print(f"Left {session.label}: cells run here again.")

    def _do_connect(self, rest: str, cell: str | None) -> Any:
        from jupyter_rjobs.ipython.magics import _parse

        args = _parse(_connect_args, rest)
        if args.cluster is not None:
            if args.target is not None:
                raise UsageError("give a host or session, or --cluster C, not both")
            jobs = self.manager.connect_cluster(args.cluster)
            return JobTable(jobs, note=f"Following {len(jobs)} detached job(s) of cluster {args.cluster}; `%rjob receive` gives what they produced.")
        jobs = self.manager.connect(args.target, force=args.force, python=args.python)
        left_elsewhere = [j for j in self.manager.left_jobs() if j.kernel_alive and args.target in (None, j.host)]
        note = f"Following {len(jobs)} job(s); `%rjob receive` gives what nobody received yet."
        if left_elsewhere:
            note += f" {len(left_elsewhere)} more belong to another running kernel (--force takes them over)."
        return JobTable(jobs, note=note)

    def _do_disconnect(self, rest: str, cell: str | None) -> Any:
        from jupyter_rjobs.ipython.magics import _parse

        args = _parse(_disconnect_args, rest)
        session = next((s for s in self.manager.sessions() if s.name == args.target), None)
        jobs = self.manager.disconnect(args.target)
        what = f"{len(jobs)} job(s): they go on on their hosts"
        if session is not None:
            what = f"{session.label} on {session.host} (it outlives this kernel) and {len(jobs)} job(s) in it"
        return JobTable(jobs, note=f"Let go of {what}; `%rjob connect {args.target}` re-attaches, here or in a new kernel.")
