"""The small rules of OpenSSH's config syntax (misc.c, match.c, readconf.c): how a line splits
into words, how patterns match, which keywords exist, which values a choice, a port, a time or a
ProxyJump hop accepts, which names ssh allows on its command line, which file modes it trusts."""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
from typing import Optional

__all__ = [
    "ConfigError",
    "KEYWORDS",
    "CHOICES",
    "strdelim",
    "argv_split",
    "match_pattern",
    "match_pattern_list",
    "match_hostname",
    "parse_hop",
    "a2port",
    "valid_hostname",
    "valid_ruser",
    "convtime",
    "secure_file",
]

WS = " \t\r\n"


class ConfigError(ValueError):
    """ssh would refuse this configuration; the message is one line naming file and line."""


# Every client keyword OpenSSH knows (9.2 and later, plus Debian's GSSAPI ones), mapped to the
# keyword it is an alias of. Unknown keywords are an error, as in ssh, unless IgnoreUnknown.
_NAMES = """
protocol cipher fallbacktorsh globalknownhostsfile2 rhostsauthentication userknownhostsfile2 useroaming usersh
useprivilegedport afstokenpassing kerberosauthentication kerberostgtpassing rsaauthentication
rhostsrsaauthentication compressionlevel gssapiauthentication gssapidelegatecredentials gssapikeyexchange
gssapiclientidentity gssapiserveridentity gssapirenewalforcesrekey gssapitrustdns gssapikexalgorithms
pkcs11provider smartcarddevice forwardagent forwardx11 forwardx11trusted forwardx11timeout exitonforwardfailure
xauthlocation gatewayports passwordauthentication kbdinteractiveauthentication kbdinteractivedevices
pubkeyauthentication hostbasedauthentication identityfile identitiesonly certificatefile addkeystoagent
identityagent hostname hostkeyalias proxycommand port ciphers macs remoteforward localforward permitremoteopen
user host match escapechar globalknownhostsfile userknownhostsfile connectionattempts batchmode checkhostip
stricthostkeychecking compression tcpkeepalive numberofpasswordprompts syslogfacility loglevel logverbose
dynamicforward preferredauthentications hostkeyalgorithms casignaturealgorithms bindaddress bindinterface
clearallforwardings enablesshkeysign verifyhostkeydns nohostauthenticationforlocalhost rekeylimit
connecttimeout addressfamily serveraliveinterval serveralivecountmax sendenv setenv controlpath controlmaster
controlpersist hashknownhosts include tunnel tunneldevice localcommand permitlocalcommand remotecommand
visualhostkey kexalgorithms ipqos requesttty sessiontype stdinnull forkafterauthentication proxyusefdpass
canonicaldomains canonicalizefallbacklocal canonicalizehostname canonicalizemaxdots
canonicalizepermittedcnames streamlocalbindmask streamlocalbindunlink revokedhostkeys fingerprinthash
updatehostkeys hostbasedacceptedalgorithms pubkeyacceptedalgorithms ignoreunknown proxyjump
securitykeyprovider knownhostscommand requiredrsasize enableescapecommandline
channeltimeout obscurekeystroketiming refuseconnection tag versionaddendum warnweakcrypto
"""
KEYWORDS: dict[str, str] = {name: name for name in _NAMES.split()}
KEYWORDS.update({
    "identityfile2": "identityfile",
    "challengeresponseauthentication": "kbdinteractiveauthentication",
    "skeyauthentication": "kbdinteractiveauthentication",
    "tisauthentication": "kbdinteractiveauthentication",
    "dsaauthentication": "pubkeyauthentication",
    "keepalive": "tcpkeepalive",
    "hostbasedkeytypes": "hostbasedacceptedalgorithms",
    "pubkeyacceptedkeytypes": "pubkeyacceptedalgorithms",
})

_FLAG = {"true": "yes", "yes": "yes", "false": "no", "no": "no"}
# the value a choice accepts -> how ``ssh -G`` prints it
CHOICES: dict[str, dict[str, str]] = {
    "batchmode": _FLAG,
    "hashknownhosts": _FLAG,
    "identitiesonly": _FLAG,
    "passwordauthentication": _FLAG,
    "kbdinteractiveauthentication": _FLAG,
    "canonicalizefallbacklocal": _FLAG,
    "stricthostkeychecking": {"true": "true", "yes": "true", "false": "false", "no": "false", "off": "false",
                              "ask": "ask", "accept-new": "accept-new"},
    "pubkeyauthentication": {"true": "true", "yes": "true", "false": "false", "no": "false",
                             "unbound": "unbound", "host-bound": "host-bound"},
    "canonicalizehostname": {"true": "true", "yes": "true", "false": "false", "no": "false", "always": "always"},
}


def strdelim(text: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """misc.c strdelim: the next word (split at whitespace, a double quote, or one ``=``) and the
    rest; ``(None, None)`` at the end or for an unmatched quote."""
    if text is None:
        return None, None
    match = re.search(r'[ \t\r\n"=]', text)
    if match is None:
        return text, None
    at = match.start()
    if text[at] == '"':
        unquoted = text[:at] + text[at + 1:]
        end = unquoted.find('"', at)
        if end < 0:
            return None, None
        return unquoted[:end], unquoted[end + 1:].lstrip(WS)
    equals = text[at] == "="
    rest = text[at + 1:].lstrip(WS)
    if rest.startswith("=") and not equals:
        rest = rest[1:].lstrip(WS)
    return text[:at], rest


def argv_split(text: str, where: str) -> list[str]:
    """misc.c argv_split: words with '…' and "…" quoting and backslash escapes; a ``#`` that
    starts a word ends the line."""
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        if text[i] == "#":
            break
        word: list[str] = []
        quote = ""
        while i < n:
            char = text[i]
            if char == "\\" and i + 1 < n and (text[i + 1] in "'\"\\" or (not quote and text[i + 1] == " ")):
                word.append(text[i + 1])
                i += 2
                continue
            if not quote and char in " \t":
                break
            if not quote and char in "\"'":
                quote = char
            elif quote and char == quote:
                quote = ""
            else:
                word.append(char)
            i += 1
        if quote:
            raise ConfigError(f"{where}: invalid quotes")
        words.append("".join(word))
    return words


def match_pattern(text: str, pattern: str) -> bool:
    """match.c match_pattern: ``*`` and ``?`` wildcards, case-sensitive, whole string."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def match_pattern_list(text: str, patterns: str, lower: bool) -> int:
    """match.c match_pattern_list: 1 if a pattern of the comma list matches, -1 if a ``!pattern``
    matches (that wins), 0 otherwise."""
    found = 0
    for sub in patterns.split(","):
        negated = sub.startswith("!")
        sub = sub[1:] if negated else sub
        if match_pattern(text, sub.lower() if lower else sub):
            if negated:
                return -1
            found = 1
    return found


def match_hostname(host: str, patterns: str) -> bool:
    return match_pattern_list(host.lower(), patterns, True) == 1


def a2port(text: str) -> int:
    if re.fullmatch(r"\d+", text):
        return int(text) if int(text) <= 65535 else -1
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        return -1


def _host_port(rest: str, delimiters: str) -> Optional[tuple[str, str, str]]:
    """hpdelim2: host (``[...]`` allowed), the delimiter after it, and what follows."""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            return None
        host, tail = rest[: end + 1], rest[end + 1:]
        if tail and tail[0] not in delimiters:
            return None
    else:
        match = re.search(f"[{re.escape(delimiters)}]", rest)
        host, tail = (rest[: match.start()], rest[match.start():]) if match else (rest, "")
    if not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, tail[:1], tail[1:]


def parse_hop(text: str) -> Optional[tuple[Optional[str], str, int]]:
    """One ProxyJump hop, ``[user@]host[:port]`` or ``ssh://[user@]host[:port]``: (user, host,
    port or -1), or None when ssh would call it invalid."""
    user: Optional[str] = None
    if text.startswith("ssh://"):
        rest = text[6:]
        if "@" in rest:
            user, rest = rest.split("@", 1)
            user = user.split(";", 1)[0]
            if not user:
                return None
        parts = _host_port(rest, ":/")
        if parts is None:
            return None
        host, delimiter, tail = parts
        port = -1
        if delimiter == ":":
            port_text, _, tail = tail.partition("/")
            port = a2port(port_text)
            if port <= 0:
                return None
        return None if tail else (user, host, port)
    rest = text
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
        if not user:
            return None
    parts = _host_port(rest, ":/")
    if parts is None or parts[1] == "/":
        return None
    host, _, tail = parts
    port = a2port(tail) if tail else -1
    if tail and port <= 0:
        return None
    return user, host, port


def valid_hostname(name: str) -> bool:
    """ssh's check of the host given on its command line: no shell metacharacters."""
    return not name.startswith("-") and not any(c in "'`\"$\\;&<>|(){}," or c.isspace() or ord(c) < 32 or ord(c) == 127
                                                for c in name)


def valid_ruser(name: str) -> bool:
    """ssh's check of a user given on its command line (-l, user@)."""
    if name.startswith("-") or name.endswith("\\"):
        return False
    for i, c in enumerate(name):
        if ord(c) < 32 or ord(c) == 127 or c in "'`\";&<>|(){}":
            return False
        if c.isspace() and name[i + 1:i + 2] == "-":
            return False
    return True


def secure_file(st: os.stat_result) -> bool:
    """Owned by root or us, not world-writable; group-writable only if that group is ours alone
    (Debian's rule for user private groups; upstream OpenSSH refuses any group write)."""
    uid = os.getuid()
    if st.st_uid not in (0, uid) or st.st_mode & 0o002:
        return False
    if not st.st_mode & 0o020:
        return True
    try:
        group = grp.getgrgid(st.st_gid)
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return False
    primary = [entry.pw_uid for entry in pwd.getpwall() if entry.pw_gid == st.st_gid]
    if any(member != uid for member in primary):
        return False
    if group.gr_mem and (group.gr_mem[0] != owner or len(group.gr_mem) > 1):
        return False
    return bool(primary or group.gr_mem)


def convtime(text: str) -> Optional[int]:
    """OpenSSH's convtime: ``90``, ``1m30s``, ``2h``; None when malformed."""
    units = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+)([sSmMhHdDwW]?)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    total = sum(int(n) * units[u.lower()] for n, u in parts)
    return total if total < 2**31 else None
