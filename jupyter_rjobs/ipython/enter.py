"""Enter-PSSession for IPython: while a session is entered, every cell runs there.

An input transformer turns each cell into ``%%rjob invoke --session S`` of it; cells that are
%rjob magics themselves stay here, so ``%rjob exit`` always works. The terminal prompt shows
``[S@host]``; in a notebook, entering and leaving print a banner.
"""

from __future__ import annotations

from typing import Any

from jupyter_rjobs.core.sessions import Session

__all__ = ["enter", "leave", "entered_session"]

_LOCAL_PREFIXES = ("%rjob", "%%rjob", "%load_ext", "%unload_ext", "%reload_ext")


class _RunInSession:
    def __init__(self, session: Session) -> None:
        self.session = session

    def __call__(self, lines: list[str]) -> list[str]:
        text = "".join(lines)
        first = text.lstrip()
        if not first.strip() or first.startswith(_LOCAL_PREFIXES):
            return lines
        return [f"get_ipython().run_cell_magic('rjob', {'invoke --session ' + str(self.session.id)!r}, {text!r})\n"]


def entered_session(shell: Any) -> Session | None:
    for transformer in shell.input_transformers_cleanup:
        if isinstance(transformer, _RunInSession):
            return transformer.session
    return None


def enter(shell: Any, session: Session) -> None:
    leave(shell)
    shell.input_transformers_cleanup.append(_RunInSession(session))
    prompts = getattr(shell, "prompts", None)
    if prompts is not None and hasattr(prompts, "in_prompt_tokens"):
        original = prompts.in_prompt_tokens

        def in_prompt_tokens(*args: Any, **kwargs: Any) -> Any:
            from pygments.token import Token

            return [(Token.Prompt, f"[{session.name}@{session.host}] "), *original(*args, **kwargs)]

        in_prompt_tokens._rjob_original = original  # type: ignore[attr-defined]
        prompts.in_prompt_tokens = in_prompt_tokens


def leave(shell: Any) -> Session | None:
    session = entered_session(shell)
    shell.input_transformers_cleanup[:] = [t for t in shell.input_transformers_cleanup if not isinstance(t, _RunInSession)]
    prompts = getattr(shell, "prompts", None)
    original = getattr(getattr(prompts, "in_prompt_tokens", None), "_rjob_original", None)
    if original is not None:
        prompts.in_prompt_tokens = original  # type: ignore[union-attr]
    return session
