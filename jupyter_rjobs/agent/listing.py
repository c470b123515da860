"""What this user left on a host, for LIST: every job spool (its meta, how far it got, whether
it runs, who forwards it). A spool of another format is listed from its meta alone."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from .proctree import alive
from .protocol import spool_problem
from .session import session_dir
from .spool import Scanner, owner_elsewhere, read_cursor, read_json, spool_refusal


def list_jobs(jobs_dir: str, sessions_dir: str) -> List[Dict[str, Any]]:
    """Every job spool of this user here: what it is, how far it got, who forwards it."""
    found = []
    for entry in sorted(os.listdir(jobs_dir)):
        if entry.startswith("."):  # a removed spool whose files are being deleted
            continue
        try:
            found.append(describe(os.path.join(jobs_dir, entry), sessions_dir))
        except Exception:  # noqa: BLE001 - an unreadable spool (half-made, damaged) is left out
            continue
    return [job for job in found if job is not None]


def describe(spool: str, sessions_dir: str) -> Optional[Dict[str, Any]]:
    """One job spool: its meta, how far it got, whether it runs, who forwards it."""
    refusal = spool_refusal(spool)
    if refusal is not None:  # said, never skipped in silence, never read
        return {"instance": os.path.basename(spool), "state": "Refused", "refused": refusal}
    meta = read_json(os.path.join(spool, "meta.json"))
    if meta is None:
        return None
    problem = spool_problem(meta)
    if problem is not None:  # its records are in a format this agent does not read
        return dict(meta, state="Unknown", reason=f"its spool {problem}", ended=None, last_seq=0,
                    cursor=read_cursor(spool), attached_elsewhere=owner_elsewhere(spool))
    scanner = Scanner(os.path.join(spool, "records"))
    try:
        scanner.to_end()
    except ValueError:  # listed all the same: adopting it says where it is corrupt
        pass
    finally:
        scanner.close()
    process = read_json(os.path.join(spool, "pid")) or {}
    if meta.get("session"):
        process = read_json(os.path.join(session_dir(sessions_dir, meta["session"]), "pid")) or {}
    running = scanner.final is None and alive(int(process.get("pid", 0)), process.get("start"))
    corrupt = {"reason": scanner.corrupt_records()[0][1]["evalue"]} if scanner.corrupt else {}
    return dict(
        meta,
        **corrupt,
        state=scanner.final or ("Running" if running and not corrupt else "Failed"),
        ended=scanner.final_time,
        last_seq=scanner.last_seq,
        cursor=read_cursor(spool),
        attached_elsewhere=owner_elsewhere(spool),
    )
