"""Logging in as OpenSSH does: the methods of PreferredAuthentications that the host offers, in
that order (publickey, keyboard-interactive, password), partial success included
(``AuthenticationMethods publickey,keyboard-interactive``).

Questions (a passphrase, a password, a one-time code) go to the prompter of the calling thread
(``_prompt.py``), at most NumberOfPasswordPrompts times each, none with BatchMode. The server's
keyboard-interactive questions arrive on paramiko's transport thread; they are handed to the
calling thread and asked there, so that a notebook's stdin, an interrupt and the prompt lock all
belong to the cell that connects. No answer is logged, stored or put in a message.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Optional

import paramiko

from jupyter_rjobs.backends.remote.ssh.config import HostSettings
from jupyter_rjobs.backends.remote.ssh.errors import CONNECTION_ERRORS, describe
from jupyter_rjobs.backends.remote.ssh.keys import Offer, load_identity, offers, open_agent
from jupyter_rjobs.backends.remote.ssh.prompt import Prompter, PromptUnavailable, current_prompter
from jupyter_rjobs.core.errors import AuthenticationError, HostError

__all__ = ["authenticate"]

PUBLICKEY, KBDINT, PASSWORD = "publickey", "keyboard-interactive", "password"
INTERACTIVE_TIMEOUT = 300.0  # s for one keyboard-interactive exchange, a person's answers included
MAX_STEPS = 20  # methods tried in one login, partial successes included (a misbehaving server)
KEY_FIX = "put your public key in ~/.ssh/authorized_keys there, or name the right one with IdentityFile in ~/.ssh/config"
NO_PROMPT_FIX = (
    "load a key into ssh-agent (ssh-add) or name one with IdentityFile in ~/.ssh/config, and put its public key"
    " in ~/.ssh/authorized_keys there"
)


def authenticate(settings: HostSettings, transport: paramiko.Transport, prompter: Optional[Prompter] = None) -> None:
    """Authenticate ``transport`` as ``settings.user``, or raise one clear error (AuthenticationError
    when the host refused us, HostError when the connection broke)."""
    login = _Login(settings, transport, prompter or current_prompter())
    try:
        login.run()
    except (AuthenticationError, HostError):
        raise
    except CONNECTION_ERRORS as exc:
        raise login.broken(exc) from None


class _Login:
    """One login: the methods tried, what each one got, and the questions asked."""

    def __init__(self, settings: HostSettings, transport: paramiko.Transport, prompter: Prompter) -> None:
        self.settings = settings
        self.transport = transport
        self.prompter = prompter
        self.user = settings.user
        self.where = f"{settings.user}@{settings.hostname}"
        self.no_prompt: Optional[str] = "BatchMode yes" if settings.batch_mode else None
        self.tries = {PASSWORD: 0, KBDINT: 0}
        self.keys_refused: list[str] = []
        self.refused: dict[str, str] = {}  # method -> what the host refused, for the error
        self.cancelled = False
        self.allowed: Optional[list[str]] = None  # the host's methods, once heard
        self.asked = 0  # questions put to the prompter

    # -- the order ----------------------------------------------------------------------
    def run(self) -> None:
        """Try the methods in order until one lets us in. The host's list of methods is learnt from
        its answers; asked for (a "none" request, which sshd answers only after its failure delay,
        about 10 ms) only before a question would be asked, or for the error."""
        done: set[str] = set()
        for _step in range(MAX_STEPS):
            method = next((m for m in self.settings.preferred_authentications
                           if self._offered(m) and m not in done and self._enabled(m)), None)
            if method is None:
                offers = self._offers()
                if self.transport.is_authenticated():  # the host took "none"
                    return
                raise self._failure(offers)
            result = {PUBLICKEY: self._publickey, KBDINT: self._keyboard_interactive, PASSWORD: self._password}[method]()
            self._check_alive()
            if self.transport.is_authenticated():
                return
            if result is None:
                done.add(method)
            else:  # partial success: the host wants another method as well (OpenSSH starts over)
                self.allowed, done = list(result), set()
        raise AuthenticationError(self.settings.alias, f"{self.where} kept asking for more logins; check AuthenticationMethods there")

    def _offered(self, method: str) -> bool:
        return self.allowed is None or method in self.allowed

    def _offers(self) -> list[str]:
        """The host's methods: as last heard, or asked for now."""
        if self.allowed is None:
            try:
                self.transport.auth_none(self.user)
            except paramiko.BadAuthenticationType as exc:
                self.allowed = list(exc.allowed_types)
            except paramiko.AuthenticationException:
                self._check_alive()
        return self.allowed if self.allowed is not None else list(self.settings.preferred_authentications)

    def _worth_asking(self, method: str) -> bool:
        """Before a question: does the host take ``method`` at all (else asking would be in vain)?"""
        return method in self._offers() and not self.transport.is_authenticated()

    def _enabled(self, method: str) -> bool:
        settings = self.settings
        if method == PUBLICKEY:
            return settings.pubkey_authentication
        if method == KBDINT:
            return settings.kbd_interactive_authentication and self.no_prompt is None and not self.cancelled
        if method == PASSWORD:
            return settings.password_authentication and self.no_prompt is None and not self.cancelled
        return False

    def _check_alive(self) -> None:
        if not self.transport.is_active():
            raise self.broken(None)

    # -- asking -------------------------------------------------------------------------
    def ask(self, text: str, echo: bool) -> Optional[str]:
        """The user's answer, or None when there is no one to ask (the reason is kept for the error)."""
        if self.no_prompt is not None:
            return None
        try:
            self.asked += 1
            return self.prompter(text, echo)
        except PromptUnavailable as exc:
            self.no_prompt = str(exc) or "no way to ask here"
        except EOFError:
            self.cancelled = True
        return None

    # -- publickey ----------------------------------------------------------------------
    def _publickey(self) -> Optional[list[str]]:
        agent, agent_note = open_agent(self.settings)
        try:
            candidates, notes = offers(self.settings, tuple(agent.get_keys()) if agent is not None else ())
            self.keys_refused += ([agent_note] if agent_note else []) + notes
            for offer in candidates:
                key = self._key(offer)
                if key is None:
                    continue
                try:
                    return list(self.transport.auth_publickey(self.user, key))
                except paramiko.BadAuthenticationType as exc:  # the host takes no keys (at this step)
                    self.allowed = list(exc.allowed_types)
                    return None
                except paramiko.AuthenticationException:
                    self._check_alive()
                    self.keys_refused.append(offer.label)
        finally:
            if agent is not None:
                agent.close()
        self.refused[PUBLICKEY] = f"every key tried ({', '.join(self.keys_refused) or 'no key found'})"
        return None

    def _key(self, offer: Offer) -> Optional[paramiko.PKey]:
        """The offer's key (a file loaded, its passphrase asked if need be), or None: noted why."""
        if offer.key is not None or offer.path is None:
            return offer.key
        key, why_not = load_identity(offer.path, self._ask_passphrase, self._passphrase_tries())
        if key is None:
            if self.no_prompt is not None and why_not.startswith("encrypted"):
                why_not = f"encrypted; its passphrase cannot be asked here: {self.no_prompt}"
            self.keys_refused.append(f"{offer.label} ({why_not})")
        return key

    def _ask_passphrase(self, text: str) -> Optional[str]:
        return self.ask(text, False) if self._worth_asking(PUBLICKEY) else None

    def _passphrase_tries(self) -> int:
        return 0 if self.no_prompt is not None else max(self.settings.number_of_password_prompts, 1)

    # -- password -----------------------------------------------------------------------
    def _password(self) -> Optional[list[str]]:
        prompt = f"{self.where}'s password: "
        while self.tries[PASSWORD] < self.settings.number_of_password_prompts and self._worth_asking(PASSWORD):
            again = "Permission denied, please try again.\n" if self.tries[PASSWORD] else ""
            password = self.ask(again + prompt, False)
            if password is None:
                return None
            self.tries[PASSWORD] += 1
            try:
                return list(self.transport.auth_password(self.user, password, fallback=False))
            except paramiko.AuthenticationException as exc:  # BadAuthenticationType: and no more passwords
                self._check_alive()
                self.refused[PASSWORD] = f"the password ({self.tries[PASSWORD]} tries)"
                if isinstance(exc, paramiko.BadAuthenticationType):
                    self.allowed = list(exc.allowed_types)
                    return None
            finally:
                del password
        return None

    # -- keyboard-interactive -------------------------------------------------------------
    def _keyboard_interactive(self) -> Optional[list[str]]:
        while self.tries[KBDINT] < self.settings.number_of_password_prompts and self.no_prompt is None and not self.cancelled:
            self.tries[KBDINT] += 1
            asked_before = self.asked
            try:
                return list(self._interactive_exchange())
            except paramiko.AuthenticationException as exc:  # BadAuthenticationType: not (or no more) offered
                self._check_alive()
                if self.asked > asked_before and self.no_prompt is None and not self.cancelled:
                    self.refused[KBDINT] = f"the answers to its questions ({self.tries[KBDINT]} tries)"
                if isinstance(exc, paramiko.BadAuthenticationType):
                    self.allowed = list(exc.allowed_types)
                    return None
        return None

    def _interactive_exchange(self) -> list[str]:
        """``auth_interactive`` on a helper thread; each round of questions is asked here."""
        rounds: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
        transport = self.transport

        def handler(title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
            if not prompts:
                return []
            answer: queue.Queue[list[str]] = queue.Queue(maxsize=1)
            rounds.put(("ask", (title, instructions, prompts), answer))
            while transport.is_active():
                try:
                    return answer.get(timeout=0.2)
                except queue.Empty:
                    continue
            raise EOFError("the connection closed while a question was open")

        def exchange() -> None:
            transport.auth_timeout = INTERACTIVE_TIMEOUT
            try:
                rounds.put(("done", transport.auth_interactive(self.user, handler), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                rounds.put(("error", exc, None))

        threading.Thread(target=exchange, name=f"rjob-login-{self.settings.alias}", daemon=True).start()
        while True:
            kind, payload, answer = rounds.get()
            if kind == "done":
                return list(payload)
            if kind == "error":
                raise payload
            try:
                answers = self._answers(*payload)
            except BaseException:
                answer.put([""] * len(payload[2]))
                raise
            answer.put(answers)

    def _answers(self, title: str, instructions: str, prompts: list[tuple[str, bool]]) -> list[str]:
        """The user's answers to one round; empty ones once there is no one to ask (the host refuses them)."""
        header = "".join(f"{line.strip()}\n" for line in (title, instructions) if line and line.strip())
        answers: list[str] = []
        for index, (text, echo) in enumerate(prompts):
            answer = self.ask(f"{header if index == 0 else ''}({self.where}) {text.strip()} ", echo)
            answers.append(answer if answer is not None else "")
        return answers

    # -- the error ----------------------------------------------------------------------
    def _failure(self, allowed: list[str]) -> AuthenticationError:
        alias = self.settings.alias
        usable = [m for m in allowed if m in (PUBLICKEY, KBDINT, PASSWORD)]
        if not usable and not self.refused:
            return AuthenticationError(alias, f"{self.where} offers only {', '.join(allowed) or 'no login method'}, which jupyter_rjobs"
                                       " cannot use (it logs in with keys, passwords and keyboard-interactive); log in with a key there")
        refused = [self.refused[m] for m in (PUBLICKEY, KBDINT, PASSWORD) if m in self.refused]
        wants_answers = [m for m in usable if m in (KBDINT, PASSWORD)]
        if self.cancelled:
            return AuthenticationError(alias, f"the login to {self.where} was cancelled")
        if wants_answers and self.no_prompt is not None and not any(m in self.refused for m in wants_answers):
            what = f"{self.where} refused {' and '.join(refused)}; it" if refused else self.where
            return AuthenticationError(alias, f"{what} asks for a password or one-time code, which cannot be asked here"
                                       f" ({self.no_prompt}): {NO_PROMPT_FIX}")
        preferred = self.settings.preferred_authentications
        disabled = [m for m in usable if (not self._enabled(m) or m not in preferred) and m not in self.refused]
        if not refused and disabled:
            names = {PUBLICKEY: "PubkeyAuthentication", KBDINT: "KbdInteractiveAuthentication", PASSWORD: "PasswordAuthentication"}
            settings = " or ".join(f"{names[m]} no" for m in disabled)
            return AuthenticationError(alias, f"{self.where} accepts only {', '.join(usable)}, which your ssh settings turn off"
                                       f" ({settings}, or PreferredAuthentications); allow it in ~/.ssh/config")
        fix = KEY_FIX if refused == [self.refused.get(PUBLICKEY)] else "check the user name, password and one-time code, or " + KEY_FIX
        return AuthenticationError(alias, f"{self.where} refused {' and '.join(refused) or 'the login'}; {fix}")

    def broken(self, exc: Optional[BaseException]) -> HostError:
        """The connection ended during the login (the host's MaxAuthTries or LoginGraceTime, the network)."""
        detail = f" ({describe(exc)})" if exc is not None else ""
        return HostError(self.settings.alias, f"{self.where} closed the connection during the login{detail}; if it was"
                         " too many keys offered (MaxAuthTries there), set IdentitiesOnly yes and the IdentityFile to use")


