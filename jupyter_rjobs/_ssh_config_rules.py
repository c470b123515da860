"""The small rules of OpenSSH's config syntax (misc.c, match.c, readconf.c): how a line splits
into words, how patterns match, which keywords exist, which values a choice accepts."""

from __future__ import annotations

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
