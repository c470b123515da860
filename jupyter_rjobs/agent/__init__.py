"""The jupyter_rjobs agent: runs a job's code and turns all it produces into numbered records.

Thread jobs call :mod:`.execute` in a kernel thread; process jobs run :mod:`.worker` in a
pre-started worker; remote hosts get this package as one zip (imported there as the top-level
package ``rjobs_agent``, so the kernel-side ``jupyter_rjobs/__init__`` never runs on a host).
So it depends on the standard library only (dill is imported when pickle refuses something),
keeps to Python 3.9 syntax, and its modules import each other relatively.

Modules: protocol (frames, operations, versions), values (pickle/dill), capture (output and
display become records), execute (compile and run a job's code), proctree (processes and
signals), worker (a process job worker), spool (a job's records on a host's disk), server
(one per SSH connection), supervisor (the pair that runs a host job), session (lasting
interpreters on a host).
"""
