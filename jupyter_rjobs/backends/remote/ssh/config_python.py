"""ssh_config read in pure Python the way OpenSSH 9.2 reads it (readconf.c, ssh.c), for machines
without an ssh client. The result is what ``ssh -G`` prints for the settings jupyter_rjobs uses:
``{key: [value, ...]}`` with lowercased keys.

Covered: Include (globs, ``~``, relative to ~/.ssh or /etc/ssh, nested, inside Host/Match), Host
patterns (``*``, ``?``, ``!``), Match (host, originalhost, user, localuser, exec, all, canonical,
final, ``!``), first value wins, ``Key=Value`` and quoting, trailing comments, ProxyCommand and
ProxyJump as one setting, IgnoreUnknown, the defaults, and token expansion where ``-G`` does it.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import socket
import subprocess
from typing import Optional

from jupyter_rjobs.backends.remote.ssh.config_rules import (
    CHOICES,
    KEYWORDS,
    ConfigError,
    a2port,
    argv_split,
    convtime,
    match_hostname,
    match_pattern,
    match_pattern_list,
    parse_hop,
    secure_file,
    strdelim,
    valid_hostname,
    valid_ruser,
)
from jupyter_rjobs.backends.remote.ssh.tokens import ExpandError, LocalUser, client_tokens, dollar_expand, percent_expand, tilde_expand

__all__ = ["python_options", "SYSTEM_CONFIG"]

SYSTEM_CONFIG = "/etc/ssh/ssh_config"
WS = " \t\r\n"
USERCONF, CHECKPERM, NEVERMATCH = 1, 2, 4
MAX_DEPTH = 16
DEFAULT_IDENTITIES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_xmss", "id_dsa")
STRINGS = ("user", "hostname", "hostkeyalias", "preferredauthentications", "ignoreunknown")
ARRAYS = ("userknownhostsfile", "globalknownhostsfile", "canonicaldomains")


class _Options:
    """ssh's ``Options``: every setting keeps the first value given (IdentityFile accumulates)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.arrays: dict[str, list[str]] = {}
        self.identity_files: list[tuple[str, bool]] = []  # (path as written, from a user config)
        self.proxy_command: Optional[str] = None
        self.jump_host: Optional[str] = None
        self.jump_user: Optional[str] = None
        self.jump_port = -1
        self.jump_extra: Optional[str] = None


class _Reader:
    """Reads config files into ``_Options`` for one host, one pass (ssh reads them twice when
    ``Match final``/``canonical`` or CanonicalizeHostname asks for it)."""

    def __init__(self, options: _Options, local: LocalUser, host_arg: str) -> None:
        self.opts = options
        self.local = local
        self.original = host_arg  # %n, Match originalhost
        self.host = host_arg  # what Host patterns match: the name as typed, then the final name
        self.final = False
        self.want_final = False

    def read_all(self, config: Optional[str]) -> None:
        if config is None:  # ~/.ssh/config, then the system-wide file
            self.read_file(os.path.join(self.local.home, ".ssh", "config"), USERCONF | CHECKPERM, [True], 0)
            self.read_file(SYSTEM_CONFIG, 0, [True], 0)
        elif config.lower() != "none" and not self.read_file(config, USERCONF, [True], 0):
            raise ConfigError(f"Can't open user config file {config}: No such file or directory")

    def read_file(self, path: str, flags: int, active: list[bool], depth: int) -> bool:
        """One file, line by line; False when it does not exist (as fopen failing)."""
        if depth > MAX_DEPTH:
            raise ConfigError("Too many recursive configuration includes")
        try:
            with open(path, "rb") as handle:
                if flags & CHECKPERM and not secure_file(os.fstat(handle.fileno())):
                    raise ConfigError(f"Bad owner or permissions on {path}")
                data = handle.read()
        except IsADirectoryError:
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ConfigError(f"Can't open user config file {path}: {exc.strerror}") from None
        lines = data.decode("utf-8", "surrogateescape").split("\n")
        for number, line in enumerate(lines, 1):
            self.line(line, path, number, active, flags, depth)
        return True

    def line(self, raw: str, path: str, number: int, active: list[bool], flags: int, depth: int) -> None:
        """process_config_line: one ``Keyword args`` line."""
        where = f"{path} line {number}"
        keyword, rest = strdelim(raw.rstrip(WS + "\f"))
        if keyword == "":
            keyword, rest = strdelim(rest)
        if not keyword or keyword[0] in "\n#":
            return
        keyword = keyword.lower()
        rest = rest.lstrip(WS) if rest is not None else ""
        if not rest:
            raise ConfigError(f'{where}: no argument after keyword "{keyword}"')
        keyword = KEYWORDS.get(keyword, "") or self._unknown(keyword, where)
        if not keyword:
            return
        args = argv_split(rest, where)
        if keyword == "host":
            self._host(args, active, flags, where)
        elif keyword == "match":
            result = self._match(rest, where)
            active[0] = False if flags & NEVERMATCH else result
        elif keyword == "include":
            self._include(args, active, flags, depth, where)
        elif keyword == "proxycommand":  # a ProxyJump taken earlier set it to "none"
            if active[0] and self.opts.proxy_command is None:
                self.opts.proxy_command = rest.lstrip(WS + "=")
        elif keyword == "proxyjump":
            self._jump(rest.lstrip(WS + "="), active[0], where)
        else:
            args = self._setting(keyword, args, active[0], bool(flags & USERCONF), where)
            if args:
                raise ConfigError(f"{where}: keyword {keyword} extra arguments at end of line")

    def _unknown(self, keyword: str, where: str) -> str:
        ignored = self.opts.values.get("ignoreunknown")
        if ignored is not None and match_pattern_list(keyword, ignored, True) == 1:
            return ""
        raise ConfigError(f"{where}: Bad configuration option: {keyword}")

    def _setting(self, keyword: str, args: list[str], active: bool, userconf: bool, where: str) -> list[str]:
        """A keyword that sets something; returns the arguments it left over."""
        opts = self.opts
        if keyword not in CHOICES and keyword not in STRINGS + ARRAYS + (
            "port", "numberofpasswordprompts", "canonicalizemaxdots", "connecttimeout", "identityfile", "identityagent",
        ):
            return []  # a setting jupyter_rjobs does not use: OpenSSH checks it, we only skip it
        if keyword in ARRAYS:
            self._array(keyword, args, active, where)
            return []
        arg = args.pop(0) if args else ""
        if not arg:
            raise ConfigError(f"{where}: Missing argument.")
        if keyword in CHOICES:
            value = CHOICES[keyword].get(arg.lower())
            if value is None:
                raise ConfigError(f'{where}: unsupported option "{arg}".')
        elif keyword == "port":
            value = str(a2port(arg))
            if value in ("-1", "0"):
                raise ConfigError(f"{where}: Bad port '{arg}'.")
        elif keyword in ("numberofpasswordprompts", "canonicalizemaxdots"):
            if not re.fullmatch(r"[+-]?\d+", arg.strip()) or not -(2**31) <= int(arg) < 2**31:
                raise ConfigError(f"{where}: integer value invalid.")
            value = str(int(arg))
        elif keyword == "connecttimeout":
            seconds = -1 if arg == "none" else convtime(arg)
            if seconds is None:
                raise ConfigError(f"{where}: invalid time value.")
            value = "none" if seconds == -1 else str(seconds)
        elif keyword == "identityfile":
            entry = (arg, userconf)  # ssh drops a repeated path, but keeps one per user and system config
            if active and entry not in opts.identity_files:
                opts.identity_files.append(entry)
            return args
        else:  # strings; IdentityAgent is checked for ${} like ssh does
            value = arg
            if keyword == "identityagent":
                _check_agent(arg, where)
        if active:
            opts.values.setdefault(keyword, value)
        return args

    def _array(self, keyword: str, args: list[str], active: bool, where: str) -> None:
        was_empty = keyword not in self.opts.arrays
        for index, arg in enumerate(args):
            if not arg:
                raise ConfigError(f"{where}: keyword {keyword} empty argument")
            if arg.lower() == "none" and (index > 0 or len(args) > 1):
                raise ConfigError(f'{where}: keyword {keyword} "none" argument must appear alone.')
            if active and was_empty:
                self.opts.arrays.setdefault(keyword, []).append(arg)

    def _host(self, args: list[str], active: list[bool], flags: int, where: str) -> None:
        active[0] = False
        for arg in args:
            if not arg:
                raise ConfigError(f"{where}: keyword host empty argument")
            if flags & NEVERMATCH:
                break
            negated = arg.startswith("!")
            if match_pattern(self.host, arg[1:] if negated else arg):
                if negated:
                    active[0] = False
                    break
                active[0] = True

    def _match(self, text: Optional[str], where: str) -> bool:
        """match_cfg_line: every criterion must hold (``all`` alone, or last)."""
        opts, local = self.opts, self.local
        port = opts.values.get("port") or "22"
        ruser = opts.values.get("user") or local.name
        if self.final:
            host = opts.values["hostname"]
        elif "hostname" in opts.values:
            host = _expand(opts.values["hostname"], {"h": self.original}, where)
        else:
            host = self.original
        result, attributes = True, 0
        while True:
            attrib, text = strdelim(text)
            if not attrib:
                break
            if attrib.startswith("#"):
                break
            negate = attrib.startswith("!")
            name = (attrib[1:] if negate else attrib).lower()
            if name == "all":
                arg, _ = strdelim(text)
                if attributes > 1 or (arg and not arg.startswith("#")):
                    raise ConfigError(f"{where}: '{attrib}' cannot be combined with other Match attributes")
                return result and not negate
            attributes += 1
            if name in ("canonical", "final"):
                if name == "final" and not self.final:
                    self.want_final = True
                if self.final == negate:
                    result = False
                continue
            arg, text = strdelim(text)
            if not arg or arg.startswith("#"):
                raise ConfigError(f"{where}: Missing Match criteria for {name}")
            if name == "host":
                matched = match_hostname(host, arg)
            elif name == "originalhost":
                matched = match_hostname(self.original, arg)
            elif name == "user":
                matched = match_pattern_list(ruser, arg, False) == 1
            elif name == "localuser":
                matched = match_pattern_list(local.name, arg, False) == 1
            elif name == "exec":
                if not result:
                    continue
                tokens = client_tokens(local, host=host, host_arg=self.original, port=int(port), user=ruser,
                                       key_alias=opts.values.get("hostkeyalias") or host)
                matched = _run_exec(_expand(arg, tokens, where), where) == 0
            else:
                raise ConfigError(f"{where}: Unsupported Match attribute {name}")
            if matched == negate:
                result = False
        if attributes == 0:
            raise ConfigError(f"{where}: One or more attributes required for Match")
        return result

    def _include(self, args: list[str], active: list[bool], flags: int, depth: int, where: str) -> None:
        for arg in args:
            if not arg:
                raise ConfigError(f"{where}: keyword include empty argument")
            if arg.startswith("~") and not flags & USERCONF:
                raise ConfigError(f"{where}: bad include path {arg}.")
            if not arg.startswith(("/", "~")):
                arg = ("~/.ssh/" if flags & USERCONF else "/etc/ssh/") + arg
            outer = active[0]
            for path in sorted(glob.glob(_glob_tilde(arg, self.local))):
                self.read_file(path, flags | CHECKPERM | (0 if outer else NEVERMATCH), active, depth + 1)
                active[0] = outer  # a Host/Match inside the included file ends with it

    def _jump(self, text: str, active: bool, where: str) -> None:
        """ProxyJump as Debian's 9.2p1 (with the 10.3 backport) and 10.3 read it: ``none`` blocks a
        later ProxyJump only; a hop list is taken only if no ProxyCommand/ProxyJump came first."""
        opts = self.opts
        if text.lower() == "none":
            if active and opts.jump_host is None:
                opts.jump_host, opts.jump_port = "none", 0
            return
        hops = text.split("#", 1)[0].rstrip()
        last = None
        for hop in reversed(hops.split(",")):
            parsed = parse_hop(hop)
            if parsed is None:
                raise ConfigError(f'{where}: Invalid ProxyJump "{text}"')
            last = last or parsed
        if not (active and opts.proxy_command is None and opts.jump_host is None) or last is None:
            return
        opts.jump_user, opts.jump_host, opts.jump_port = last
        opts.proxy_command = "none"
        if "," in hops:
            opts.jump_extra = hops[: hops.rfind(",")]


def python_options(
    host_arg: str, *, config: Optional[str], user: Optional[str], port: Optional[int], local: LocalUser,
) -> dict[str, list[str]]:
    """What ``ssh -G [-F config] [-l user] [-p port] host_arg`` prints for the settings we use.
    Raises :class:`ConfigError` (one line) where ssh would refuse the configuration."""
    if not valid_hostname(host_arg):
        raise ConfigError("hostname contains invalid characters")
    if user and not valid_ruser(user):
        raise ConfigError("remote username contains invalid characters")
    opts = _Options()
    if user:
        opts.values["user"] = user
    if port:
        opts.values["port"] = str(port)
    reader = _Reader(opts, local, host_arg)
    reader.read_all(config)
    host = host_arg
    if "hostname" in opts.values:
        host = _expand(opts.values["hostname"], {"h": host_arg}, "HostName")
        opts.values["hostname"] = host
    was_addr = _is_addr(host)
    if not was_addr:
        host = host.lower()
    canonicalize = opts.values.get("canonicalizehostname", "false")
    if canonicalize != "false" or was_addr:
        host = _canonicalize(host, opts, canonicalize)
    if reader.want_final or canonicalize != "false":
        opts.values["hostname"] = host
        reader.host, reader.final = host, True
        reader.read_all(config)
    return _dump(opts, host, host_arg, local)


def _dump(opts: _Options, host: str, host_arg: str, local: LocalUser) -> dict[str, list[str]]:
    """fill_default_options, the expansions ssh does before ``-G`` prints, and the ``-G`` lines."""
    values = opts.values
    user = values.get("user") or local.name
    port = int(values.get("port") or 22)
    alias = values["hostkeyalias"].lower() if "hostkeyalias" in values else None
    tokens = client_tokens(local, host=host, host_arg=host_arg, port=port, user=user, key_alias=alias or host_arg)
    out: dict[str, list[str]] = {"host": [host_arg], "user": [user], "hostname": [host], "port": [str(port)]}
    for key, default in (("batchmode", "no"), ("hashknownhosts", "no"), ("identitiesonly", "no"), ("kbdinteractiveauthentication", "yes"),
                         ("passwordauthentication", "yes"), ("pubkeyauthentication", "true"),
                         ("stricthostkeychecking", "ask"), ("numberofpasswordprompts", "3"),
                         ("canonicalizehostname", "false"), ("connecttimeout", "none")):
        out[key] = [values.get(key, default)]
    for key in ("preferredauthentications",):
        if key in values:
            out[key] = [values[key]]
    if alias is not None:
        out["hostkeyalias"] = [alias]
    if "identityagent" in values:
        out["identityagent"] = [_expand(tilde_expand(values["identityagent"], local), tokens, "IdentityAgent", True)]
    files = [path for path, _ in opts.identity_files] or [f"~/.ssh/{name}" for name in DEFAULT_IDENTITIES]
    out["identityfile"] = files
    system = opts.arrays.get("globalknownhostsfile", ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"])
    out["globalknownhostsfile"] = [" ".join(system) if system[0].lower() != "none" else "none"]
    known = opts.arrays.get("userknownhostsfile", ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"])
    if known[0].lower() == "none":
        out["userknownhostsfile"] = ["none"]
    else:
        expanded = [_expand(tilde_expand(p, local), tokens, "UserKnownHostsFile", True) for p in known]
        out["userknownhostsfile"] = [" ".join(expanded)]
    if opts.jump_host is not None and not (opts.jump_host == "none" and opts.jump_port == 0 and opts.jump_user is None):
        out["proxyjump"] = [_format_jump(opts)]
    elif opts.proxy_command is not None and opts.proxy_command.lower() != "none" and opts.proxy_command != "":
        out["proxycommand"] = [opts.proxy_command]
    return out


def _format_jump(opts: _Options) -> str:
    host = opts.jump_host or ""
    numeric = ":" in host or all(c in "0123456789." for c in host)
    text = f"{opts.jump_extra}," if opts.jump_extra is not None else ""
    text += f"{opts.jump_user}@" if opts.jump_user is not None else ""
    text += f"[{host}]" if numeric else host
    return text + (f":{opts.jump_port}" if opts.jump_port > 0 else "")


def _expand(text: str, tokens: dict[str, str], where: str, dollar: bool = False) -> str:
    try:
        return percent_expand(text, tokens, dollar=dollar)
    except ExpandError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_agent(arg: str, where: str) -> None:
    try:
        dollar_expand(arg)
    except ExpandError:
        raise ConfigError(f"{where}: Invalid environment expansion {arg}.") from None
    if arg.startswith("$") and not arg.startswith("${") and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", arg[1:]):
        raise ConfigError(f"{where}: Invalid environment name {arg}.")


def _run_exec(command: str, where: str) -> int:
    """``Match exec``: ``$SHELL -c CMD`` with stdin and stdout on /dev/null; its exit status."""
    shell = os.environ.get("SHELL") or "/bin/sh"
    if not os.access(shell, os.X_OK):
        raise ConfigError(f'{where}: Shell "{shell}" is not executable')
    proc = subprocess.run([shell, "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=False)
    if proc.returncode < 0:
        raise ConfigError(f"{where}: match exec '{command[:100]}' error")
    return proc.returncode


def _glob_tilde(pattern: str, local: LocalUser) -> str:
    """glob(3)'s GLOB_TILDE: ``~`` is $HOME (then the passwd home), ``~user`` that user's home."""
    if not pattern.startswith("~"):
        return pattern
    name, slash, rest = pattern[1:].partition("/")
    if not name:
        home = os.environ.get("HOME") or local.home
    else:
        try:
            home = pwd.getpwnam(name).pw_dir
        except KeyError:
            return pattern
    return home.rstrip("/") + "/" + rest if slash else home


def _is_addr(name: str) -> bool:
    """ssh's is_addr: a literal IPv4/IPv6 address (or anything with ``%`` or ``:``)."""
    if "%" in name or ":" in name or all(c in "0123456789." for c in name):
        return True
    try:
        infos = socket.getaddrinfo(name, 22, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
    except (socket.gaierror, UnicodeError):
        return False
    return len(infos) == 1


def _canonicalize(host: str, opts: _Options, mode: str) -> str:
    """resolve_canonicalize: a literal address in its numeric form; with CanonicalizeHostname, the
    first ``host.domain`` of CanonicalDomains that resolves (CNAME rules are not followed)."""
    try:
        infos = socket.getaddrinfo(host, 22, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
        return socket.getnameinfo(infos[0][4], socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
    except (socket.gaierror, UnicodeError, IndexError):
        pass
    if "%" in host or ":" in host or all(c in "0123456789." for c in host) or mode == "false":
        return host
    direct = (opts.proxy_command is None or opts.proxy_command.lower() == "none") and opts.jump_host is None
    if not direct and mode != "always":
        return host
    candidates: list[str] = []
    if host.endswith("."):
        candidates = [host]
    elif host.count(".") > int(opts.values.get("canonicalizemaxdots", "1")):
        return host
    else:
        for domain in opts.arrays.get("canonicaldomains", []):
            if domain.lower() == "none":
                break
            candidates.append(f"{host}.{domain}.")
    for name in candidates:
        try:
            socket.getaddrinfo(name, 22, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            continue
        return name[:-1]
    if opts.values.get("canonicalizefallbacklocal", "yes") == "no":
        raise ConfigError(f'Could not resolve host "{host}"')
    return host
