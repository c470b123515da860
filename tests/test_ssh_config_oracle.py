"""ssh_config as OpenSSH reads it. Every case of tests/ssh_config_cases.py is resolved by OpenSSH
(the oracle) and by both of our resolvers (``ssh -G`` and pure Python); the fields must agree.

The oracle: ``ssh -G`` for the settings; ``ssh -vvv`` for the IdentityFile paths ssh really
expands (``identity file PATH type N``); a recording ``$SHELL`` for the ProxyCommand ssh really
runs (``$SHELL -c "exec CMD"``: the recorder keeps CMD and exits, so nothing connects anywhere).

ssh expands ``~`` and ``%d`` with the passwd home, not $HOME. So that no test touches the real
home directory, every ssh here runs in a private mount namespace whose /etc/passwd gives this
uid a temporary home (``unshare --mount`` + ``mount --bind``); our resolvers are told the same
home (``local_user``). Needs the ssh client and unshare; missing: fails under CI, else skips.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
from helpers import unavailable
from ssh_config_cases import CASES, Case

from jupyter_rjobs import HostError
from jupyter_rjobs.backends.remote.ssh.config import DEFAULT_CONNECT_TIMEOUT, HostSettings, parse_host_spec, resolve_host
from jupyter_rjobs.backends.remote.ssh.config_python import python_options
from jupyter_rjobs.backends.remote.ssh.config_rules import ConfigError
from jupyter_rjobs.backends.remote.ssh.tokens import LocalUser

FIELDS = (
    "hostname", "port", "user", "identity_files", "identities_only", "identity_agent", "proxy_jump", "proxy_command",
    "known_hosts_files", "global_known_hosts_files", "host_key_alias", "strict_host_key_checking", "accept_new",
    "batch_mode", "hash_known_hosts", "pubkey_authentication", "password_authentication", "kbd_interactive_authentication",
    "preferred_authentications", "number_of_password_prompts", "connect_timeout",
)
OPTIONAL_KEYS = ("proxycommand", "proxyjump", "hostkeyalias", "identityagent", "preferredauthentications")
RECORDER = """#!/bin/sh
# $SHELL for ssh: record a ProxyCommand ("exec CMD") and fail it; run anything else (Match exec).
case "$2" in
  "exec "*) printf '%s' "$2" > "$RJOBS_ORACLE_RECORD"; exit 1;;
esac
exec /bin/sh -c "$2"
"""


@dataclass
class Oracle:
    """OpenSSH run with a temporary passwd home, and what our resolvers need to see the same."""

    base: Path
    home: Path
    bindir: Path
    local: LocalUser

    def ssh(self, args: list[str], **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bindir / "ssh"), *args], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, env={**os.environ, **env})


def _unavailable(reason: str) -> None:
    unavailable("the ssh_config oracle tests", reason)


@pytest.fixture(scope="session")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Oracle:
    ssh = shutil.which("ssh")
    if ssh is None:
        _unavailable("an OpenSSH client (ssh) on PATH")
    base = tmp_path_factory.mktemp("ssh-oracle")
    home = base / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    uid = os.getuid()
    lines = []
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[2] == str(uid):
            fields[5] = str(home)
        lines.append(":".join(fields))
    (base / "passwd").write_text("\n".join(lines) + "\n")
    bindir = base / "bin"
    bindir.mkdir()
    (bindir / "recorder").write_text(RECORDER)
    (bindir / "recorder").chmod(0o755)
    for flags in ("--mount", "--user --map-current-user --mount"):
        (bindir / "ssh").write_text(
            "#!/bin/sh\nexec unshare " + flags + " -- /bin/sh -c 'mount --bind \"$0\" /etc/passwd && exec \"$@\"' "
            + shlex.quote(str(base / "passwd")) + " " + shlex.quote(ssh) + ' "$@"\n'
        )
        (bindir / "ssh").chmod(0o755)
        probe = subprocess.run([str(bindir / "ssh"), "-G", "probe"], capture_output=True, text=True, timeout=30)
        if f"userknownhostsfile {home}/.ssh/known_hosts" in probe.stdout:
            break
    else:
        _unavailable(f"a private mount namespace to give ssh a temporary home (unshare: {probe.stderr.strip()[:200]})")
    local = LocalUser(name=LocalUser.current().name, uid=uid, home=str(home), hostname=socket.gethostname())
    return Oracle(base=base, home=home, bindir=bindir, local=local)


@pytest.fixture
def oracle_env(oracle: Oracle, monkeypatch: pytest.MonkeyPatch) -> Oracle:
    """This process as the oracle's ssh sees the world: ssh on PATH is the wrapper, HOME is the
    temporary home (Include's ``~`` uses $HOME), no hosts.ini, no resolver chosen."""
    monkeypatch.setenv("PATH", f"{oracle.bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("HOME", str(oracle.home))
    monkeypatch.setenv("SHELL", "/bin/sh")
    monkeypatch.setenv("JUPYTER_RJOBS_HOSTS", str(oracle.base / "no-hosts.ini"))
    monkeypatch.delenv("JUPYTER_RJOBS_SSH_RESOLVER", raising=False)
    return oracle


# -- one case ------------------------------------------------------------------------------------
@dataclass
class Setup:
    config: Optional[str]  # the -F path; None: the default files
    written: list[Path]


def write_case(oracle: Oracle, case: Case) -> Setup:
    folder = oracle.base / "cases" / case.name
    folder.mkdir(parents=True, exist_ok=True)

    def fill(text: str) -> str:
        return text.replace("{D}", str(folder)).replace("{H}", str(oracle.home))

    written: list[Path] = []
    for name, text in case.files.items():
        path = oracle.home / name[2:] if name.startswith("~/") else folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(fill(text))
        written.append(path)
    if case.missing_config:
        return Setup(str(folder / "no-such-config"), written)
    path = oracle.home / ".ssh" / "config" if case.default_config else folder / "cfg"
    path.write_text(fill(case.config))
    path.chmod(case.config_mode)
    written.append(path)
    return Setup(None if case.default_config else str(path), written)


@dataclass
class Answer:
    """OpenSSH's verdict on one case."""

    error: str  # ssh refused the configuration ("" if not)
    lines: dict[str, list[str]]  # ssh -G
    identities: list[str]  # what ssh -vvv expanded IdentityFile to
    proxy_command: Optional[str]  # what ssh ran through $SHELL


def ask_openssh(oracle: Oracle, case: Case, config: Optional[str]) -> Answer:
    user, host, port = parse_host_spec(case.spec)
    common = (["-F", config] if config else []) + (["-p", str(port)] if port else []) + (["-l", user] if user else [])
    shown = oracle.ssh(["-G", *common, "--", host], SHELL="/bin/sh")
    if shown.returncode != 0:
        return Answer(shown.stderr.strip() or f"exit {shown.returncode}", {}, [], None)
    lines: dict[str, list[str]] = {}
    for line in shown.stdout.splitlines():
        key, _, value = line.partition(" ")
        lines.setdefault(key, []).append(value)
    record = oracle.base / "cases" / case.name / "proxy-record"
    record.unlink(missing_ok=True)
    direct = "proxycommand" not in lines and "proxyjump" not in lines
    extra = ["-o", "ProxyCommand=rjobs-oracle-direct"] if direct else []
    ran = oracle.ssh(["-vvv", "-o", "BatchMode=yes", *extra, *common, "--", host, "true"],
                     SHELL=str(oracle.bindir / "recorder"), RJOBS_ORACLE_RECORD=str(record))
    identities: list[str] = []
    for found in re.findall(r"identity file (.*) type -?\d+$", ran.stderr, re.M):
        if not (identities and found == identities[-1] + "-cert"):
            identities.append(found)
    proxy = record.read_text() if "proxycommand" in lines and record.exists() else None
    return Answer("", lines, identities, proxy[len("exec "):] if proxy is not None else None)


def expected_fields(answer: Answer) -> dict[str, object]:
    """OpenSSH's answer in HostSettings' terms (jupyter_rjobs' only own choice: ConnectTimeout none
    means our default timeout, not the system's TCP timeout)."""
    one = {key: values[0] for key, values in answer.lines.items()}

    def files(key: str) -> tuple[str, ...]:
        return () if one[key] == "none" else tuple(one[key].split())

    strict = one["stricthostkeychecking"]
    return {
        "hostname": one["hostname"], "port": int(one["port"]), "user": one["user"],
        "identity_files": tuple(answer.identities), "identities_only": one["identitiesonly"] == "yes",
        "identity_agent": one.get("identityagent"),
        "proxy_jump": tuple(one["proxyjump"].split(",")) if "proxyjump" in one else (),
        "proxy_command": answer.proxy_command,
        "known_hosts_files": files("userknownhostsfile"), "global_known_hosts_files": files("globalknownhostsfile"),
        "host_key_alias": one.get("hostkeyalias"), "strict_host_key_checking": strict,
        "accept_new": strict in ("accept-new", "false"), "batch_mode": one["batchmode"] == "yes",
        "pubkey_authentication": one["pubkeyauthentication"] != "false",
        "password_authentication": one["passwordauthentication"] == "yes",
        "kbd_interactive_authentication": one["kbdinteractiveauthentication"] == "yes",
        "preferred_authentications": tuple(one["preferredauthentications"].split(","))
        if "preferredauthentications" in one else HostSettings.preferred_authentications,
        "number_of_password_prompts": int(one["numberofpasswordprompts"]),
        "connect_timeout": DEFAULT_CONNECT_TIMEOUT if one["connecttimeout"] == "none" else float(one["connecttimeout"]),
    }


Resolver = Callable[[str, Optional[str]], HostSettings]


def disagreements(answer: Answer, resolve: Resolver, spec: str, config: Optional[str]) -> list[str]:
    """How one resolver's HostSettings differ from OpenSSH's answer (empty: they agree)."""
    try:
        settings = resolve(spec, config)
    except HostError as exc:
        if answer.error:
            return [] if "\n" not in str(exc) else [f"error message is not one line: {exc}"]
        return [f"raised {exc} where ssh accepts the configuration"]
    except Exception as exc:  # noqa: BLE001 - anything else is a disagreement to report, not a crash
        return [f"raised {type(exc).__name__}: {exc}"]
    if answer.error:
        return [f"accepted what ssh refuses ({answer.error.splitlines()[0]})"]
    ours = {name: getattr(settings, name) for name in FIELDS}
    return [f"{name}: ssh {value!r}, ours {ours[name]!r}" for name, value in expected_fields(answer).items() if ours[name] != value]


def raw_disagreements(answer: Answer, oracle: Oracle, spec: str, config: Optional[str]) -> list[str]:
    """The pure-Python reader's ``ssh -G`` lines against ssh's own, key by key."""
    user, host, port = parse_host_spec(spec)
    try:
        ours = python_options(host, config=config, user=user, port=port, local=oracle.local)
    except ConfigError as exc:
        return [] if answer.error else [f"python reader raised {exc}"]
    if answer.error:
        return [f"python reader accepted what ssh refuses ({answer.error.splitlines()[0]})"]
    differ = [f"{key}: ssh {answer.lines.get(key)!r}, ours {value!r}" for key, value in ours.items() if answer.lines.get(key) != value]
    return differ + [f"{key}: ssh prints it, ours not" for key in OPTIONAL_KEYS if key in answer.lines and key not in ours]


def our_resolver(kind: str, local: LocalUser) -> Resolver:
    return lambda spec, config: resolve_host(spec, ssh_config=config, resolver=kind, local_user=local)


def run_case(oracle: Oracle, case: Case, resolvers: dict[str, Resolver], raw: bool = False) -> dict[str, list[str]]:
    """Write the case, ask OpenSSH, ask each resolver (and with ``raw`` the pure-Python reader's
    ``-G`` lines); remove what was written to the home. {resolver: disagreements}."""
    old_env = {key: os.environ.get(key) for key in case.env}
    folder = oracle.base / "cases" / case.name
    os.environ.update({key: value.replace("{D}", str(folder)) for key, value in case.env.items()})
    setup = write_case(oracle, case)
    try:
        answer = ask_openssh(oracle, case, setup.config)
        found = {name: disagreements(answer, resolve, case.spec, setup.config) for name, resolve in resolvers.items()}
        if raw:
            found["python -G lines"] = raw_disagreements(answer, oracle, case.spec, setup.config)
        return found
    finally:
        for path in setup.written:
            if oracle.home in path.parents:
                path.unlink(missing_ok=True)
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- the tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_both_resolvers_agree_with_openssh(case: Case, oracle_env: Oracle) -> None:
    resolvers = {kind: our_resolver(kind, oracle_env.local) for kind in ("openssh", "python")}
    differences = run_case(oracle_env, case, resolvers, raw=True)
    problems = [f"{kind}: {d}" for kind, found in differences.items() for d in found]
    assert not problems, "\n".join(problems)


def test_the_table_covers_every_category() -> None:
    categories = {case.category for case in CASES}
    assert len(CASES) >= 60
    assert categories >= {"syntax", "hostname", "first-wins", "host-patterns", "include", "match", "tokens", "proxy",
                          "identity", "known-hosts", "strict", "auth", "timeout", "defaults", "default-config", "errors"}
    assert len({case.name for case in CASES}) == len(CASES)
