"""The oracle table for ssh_config: configurations that tests/test_ssh_config_oracle.py resolves with
both of our resolvers and with OpenSSH (``ssh -G``, ``ssh -vvv``). No expected values are written
here: OpenSSH says what each configuration means.

In a case, ``{D}`` is the case's own directory and ``{H}`` the home directory ssh sees (a
temporary one; ``{D}`` may also appear in ``env``). ``config`` is written to ``{D}/cfg`` (used as ``-F``), or to ``~/.ssh/config``
when ``default_config`` (then ssh reads it and /etc/ssh/ssh_config, with no ``-F``). ``files``
are more files: a name starting with ``~/`` goes to the home directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Case", "CASES"]


@dataclass(frozen=True)
class Case:
    name: str
    category: str
    config: str
    spec: str = "target"
    files: dict = field(default_factory=dict)
    default_config: bool = False
    env: dict = field(default_factory=dict)
    missing_config: bool = False  # -F names a file that does not exist
    config_mode: int = 0o600


def _c(name: str, category: str, config: str, **kw) -> Case:
    return Case(name=name, category=category, config=config, **kw)


_STRICT = ["yes", "no", "off", "accept-new", "ask", "true", "false"]

CASES: list[Case] = [
    # -- the basics and the syntax ---------------------------------------------------------------
    _c("plain", "basics", "Host target\n  HostName 10.1.2.3\n  Port 2200\n  User carol\n"),
    _c("no-entry-defaults", "defaults", "Host other\n  Port 1234\n"),
    _c("key-equals-value", "syntax", "Host=target\nHostName=h.example\nPort = 2201\nUser =dave\nBatchMode= yes\n"),
    _c("quoted-values", "syntax", 'Host "target"\n  User "quoted"\n  IdentityFile "{D}/my key"\n'),
    _c("trailing-comments", "syntax", "Host target # the target\n  Port 2200 # new port\n  User bob #who\n"),
    _c("comments-blank-tabs-crlf", "syntax", "# a comment\r\n\r\n\tHost\ttarget\r\n\t\tPort\t2202\r\n   # indented comment\r\n"),
    _c("keywords-any-case", "syntax", "HOST target\n  HOSTNAME H.Example\n  pOrT 2203\n"),
    _c("hostname-lowercased", "hostname", "Host target\n  HostName MyServer.Example.COM\n"),
    _c("typed-uppercase-host", "hostname", "Host target\n  Port 2201\nHost TARGET\n  Port 2202\n", spec="TARGET"),
    _c("hostname-percent-h", "hostname", "Host target\n  HostName %h.corp.example\n"),
    _c("hostname-numeric-normalised", "hostname", "Host target\n  HostName 127.1\n"),
    _c("spec-user-port-win", "basics", "Host target\n  User carol\n  Port 2200\n", spec="alice@target:2300"),
    _c("first-value-wins", "first-wins", "Host target\n  Port 2200\n  Port 2300\nHost *\n  Port 2400\n  User star\n"),
    _c("host-star-first", "first-wins", "Host *\n  User early\nHost target\n  User late\n  Port 2205\n"),
    _c("port-service-name", "basics", "Host target\n  Port ssh\n"),
    # -- Host patterns ---------------------------------------------------------------------------
    _c("pattern-star", "host-patterns", "Host tar*\n  Port 2210\n"),
    _c("pattern-question", "host-patterns", "Host t?rget\n  Port 2211\n"),
    _c("pattern-list", "host-patterns", "Host alpha target beta\n  Port 2212\n"),
    _c("pattern-negated-stops", "host-patterns", "Host * !target\n  Port 2213\nHost *\n  Port 2214\n"),
    _c("pattern-negation-only", "host-patterns", "Host !other\n  Port 2215\n"),
    _c("pattern-no-match", "host-patterns", "Host targ\n  Port 2216\nHost target?\n  Port 2217\n"),
    # -- Include ---------------------------------------------------------------------------------
    _c("include-relative-to-dot-ssh", "include", "Include rjobs-oracle-rel.conf\n",
       files={"~/.ssh/rjobs-oracle-rel.conf": "Host target\n  Port 2220\n  User rel\n"}),
    _c("include-glob-sorted", "include", "Include {D}/conf.d/*.conf\n",
       files={"conf.d/20-b.conf": "Host target\n  Port 2222\n", "conf.d/10-a.conf": "Host target\n  Port 2221\n  User a\n",
              "conf.d/.hidden.conf": "Host *\n  User hidden\n"}),
    _c("include-tilde", "include", "Include ~/rjobs-oracle-tilde.conf\n",
       files={"~/rjobs-oracle-tilde.conf": "Host target\n  HostName tilde.example\n"}),
    _c("include-nested", "include", "Include {D}/a.conf\nHost target\n  Port 2229\n",
       files={"a.conf": "Include {D}/b.conf\nHost target\n  User from-a\n", "b.conf": "Host target\n  Port 2223\n"}),
    _c("include-inside-matching-host", "include", "Host target\n  Include {D}/in.conf\n  User outer\n",
       files={"in.conf": "Port 2224\nUser inner\n"}),
    _c("include-inside-other-host", "include", "Host other\n  Include {D}/in.conf\nHost *\n  Port 2226\n",
       files={"in.conf": "Host target\n  Port 2225\n  User never\n"}),
    _c("include-no-match-ignored", "include", "Include {D}/nothing-*.conf {D}/missing.conf\nHost target\n  Port 2227\n"),
    _c("include-restores-activity", "include", "Host target\n  Include {D}/in.conf\n  Port 2228\n",
       files={"in.conf": "Host other\n  User other-user\n"}),
    _c("include-inside-match", "include", "Match host target\n  Include {D}/in.conf\n",
       files={"in.conf": "HostName matched.example\n"}),
    _c("include-tilde-is-HOME-not-passwd-home", "include", "Include ~/inc.conf rel.conf\nHost target\n  IdentityFile ~/k\n",
       env={"HOME": "{D}/otherhome"},
       files={"otherhome/inc.conf": "Host target\n  Port 2231\n", "otherhome/.ssh/rel.conf": "Host target\n  User rel\n"}),
    _c("include-multiple-args", "include", "Include {D}/x.conf {D}/y.conf\n",
       files={"x.conf": "Host target\n  User x\n", "y.conf": "Host target\n  User y\n  Port 2230\n"}),
    # -- Match -----------------------------------------------------------------------------------
    _c("match-host-uses-hostname", "match", "Host target\n  HostName 10.1.2.3\nMatch host 10.1.*\n  Port 2240\n"),
    _c("match-originalhost", "match", "Host target\n  HostName elsewhere.example\nMatch originalhost target\n  User orig\n"),
    _c("match-user-from-spec", "match", "Match user alice\n  Port 2241\n", spec="alice@target"),
    _c("match-user-not", "match", "Match user alice\n  Port 2242\n", spec="bob@target"),
    _c("match-localuser", "match", "Match localuser root,nobody\n  Port 2243\nMatch !localuser root\n  User notroot\n"),
    _c("match-exec-true", "match", 'Match exec "test -f {D}/flag"\n  Port 2244\n', files={"flag": ""}),
    _c("match-exec-false", "match", 'Match exec "test -f {D}/absent"\n  Port 2245\n'),
    _c("match-exec-tokens", "match", 'Host target\n  HostName Real.Example\nMatch exec "test %h:%p:%n:%r = Real.Example:22:target:%u"\n  User tokens\n'),
    _c("match-all", "match", "Match all\n  Port 2246\n"),
    _c("match-canonical-without-final", "match", "Match canonical\n  Port 2247\nHost *\n  Port 2248\n"),
    _c("match-final", "match", "Match final\n  Port 2249\nHost *\n  User before-final\n"),
    _c("match-final-host-block-sees-hostname", "match", "Host target\n  HostName 10.9.8.7\nMatch final\nHost 10.9.8.7\n  Port 2250\n"),
    _c("canonicalize-hostname-final-pass", "match", "CanonicalizeHostname yes\nMatch canonical\n  Port 2251\n"),
    _c("match-canonical-all", "match", "CanonicalizeHostname yes\nMatch canonical all\n  User canon\n"),
    _c("match-negated-host", "match", "Match !host other\n  Port 2252\n"),
    _c("match-several-one-false", "match", "Match host target user nobody\n  Port 2253\nMatch host target\n  Port 2254\n"),
    _c("match-host-case-insensitive", "match", "Host target\n  HostName Mixed.Example\nMatch host MIXED.example\n  Port 2255\n"),
    # -- tokens ----------------------------------------------------------------------------------
    _c("identityfile-tokens", "tokens", "Host target\n  HostName Real.Example\n  User u1\n  Port 2260\n"
       "  IdentityFile %d/.ssh/%u-%h-%p-%r-%n-%l-%L-%i-%%\n  IdentityFile {D}/k-%C\n"),
    _c("identityfile-tilde-and-env", "tokens", "Host target\n  IdentityFile ~/.ssh/k-${RJOBS_ORACLE_VAR}\n",
       env={"RJOBS_ORACLE_VAR": "fromenv"}),
    _c("identityfile-key-alias-token", "tokens", "Host target\n  HostKeyAlias Alias1\n  IdentityFile {D}/k-%k\n"),
    _c("knownhosts-tokens", "tokens", "Host target\n  HostName Real.Example\n  UserKnownHostsFile {D}/kh-%h-%p ~/kh2 %d/kh3-%r\n"),
    _c("proxycommand-tokens", "tokens", "Host target\n  HostName Real.Example\n  Port 2261\n  User pc\n"
       "  ProxyCommand nc -X connect %h %p # %r %n %k %%\n"),
    _c("proxycommand-key-alias", "tokens", "Host target\n  HostKeyAlias Kept.Alias\n  ProxyCommand exec-it %k %h\n"),
    _c("identityagent-tokens", "tokens", "Host target\n  IdentityAgent ~/agent-%r.sock\n"),
    # -- ProxyJump / ProxyCommand ----------------------------------------------------------------
    _c("proxyjump-one", "proxy", "Host target\n  ProxyJump bastion\n"),
    _c("proxyjump-chain", "proxy", "Host target\n  ProxyJump j1,j2,j3\n"),
    _c("proxyjump-user-port-uri", "proxy", "Host target\n  ProxyJump ssh://ju@j1:2222,jv@j2:2223\n"),
    _c("proxyjump-numeric", "proxy", "Host target\n  ProxyJump 10.0.0.1:2222\n"),
    _c("proxycommand-before-proxyjump", "proxy", "Host target\n  ProxyCommand nc %h %p\nHost *\n  ProxyJump later\n"),
    _c("proxyjump-before-proxycommand", "proxy", "Host target\n  ProxyJump first\nHost *\n  ProxyCommand nc %h %p\n"),
    _c("proxycommand-none-disables-jump", "proxy", "Host target\n  ProxyCommand none\nHost *\n  ProxyJump later\n"),
    _c("proxyjump-none-disables-command", "proxy", "Host target\n  ProxyJump none\nHost *\n  ProxyCommand nc %h %p\n"),
    _c("proxyjump-trailing-comment", "proxy", "Host target\n  ProxyJump j1,j2 # two hops\n"),
    # -- identities --------------------------------------------------------------------------------
    _c("identity-defaults-in-order", "identity", "Host target\n  User idd\n"),
    _c("identity-given-no-defaults", "identity", "Host target\n  IdentityFile {D}/only\n"),
    _c("identity-accumulate-dedup", "identity", "Host target\n  IdentityFile {D}/one\n  IdentityFile {D}/one\nHost *\n  IdentityFile {D}/two\n"),
    _c("identity-none-and-only", "identity", "Host target\n  IdentityFile none\n  IdentityFile {D}/k\n  IdentitiesOnly yes\n"),
    # -- known_hosts -------------------------------------------------------------------------------
    _c("knownhosts-defaults", "known-hosts", "Host target\n  Port 2270\n"),
    _c("knownhosts-first-list-wins", "known-hosts", "Host target\n  UserKnownHostsFile {D}/a {D}/b\nHost *\n  UserKnownHostsFile {D}/c\n"),
    _c("knownhosts-none", "known-hosts", "Host target\n  UserKnownHostsFile none\n  GlobalKnownHostsFile none\n"),
    _c("knownhosts-global-custom", "known-hosts", "Host target\n  GlobalKnownHostsFile {D}/g1 {D}/g2\n"),
    _c("hostkeyalias", "known-hosts", "Host target\n  HostName 10.1.2.3\n  HostKeyAlias MyAlias.Example\n"),
    # -- authentication and other settings ---------------------------------------------------------
    *[_c(f"stricthostkeychecking-{value}", "strict", f"Host target\n  StrictHostKeyChecking {value}\n") for value in _STRICT],
    _c("auth-settings", "auth", "Host target\n  BatchMode yes\n  PubkeyAuthentication no\n  PasswordAuthentication no\n"
       "  KbdInteractiveAuthentication no\n  PreferredAuthentications publickey,password\n  NumberOfPasswordPrompts 1\n"),
    _c("auth-aliases-and-unbound", "auth", "Host target\n  ChallengeResponseAuthentication no\n  PubkeyAuthentication unbound\n"),
    _c("hash-known-hosts", "known_hosts", "Host target\n  HashKnownHosts yes\nHost other\n  HashKnownHosts true\n"),
    _c("hash-known-hosts-true", "known_hosts", "Host target\n  HashKnownHosts true\n"),
    _c("connecttimeout-seconds", "timeout", "Host target\n  ConnectTimeout 5\n"),
    _c("connecttimeout-units", "timeout", "Host target\n  ConnectTimeout 1m30s\n"),
    _c("connecttimeout-none", "timeout", "Host target\n  ConnectTimeout none\n"),
    _c("ignoreunknown", "syntax", "IgnoreUnknown FooBar,Baz*\nHost target\n  FooBar yes\n  BazQux 1\n  Port 2280\n"),
    _c("unused-keywords-skipped", "syntax", "Host target\n  ControlMaster auto\n  ControlPath ~/.ssh/cm-%C\n"
       "  SendEnv LANG LC_*\n  ServerAliveInterval 30\n  ForwardAgent yes\n  Port 2281\n"),
    # -- the user's default files (~/.ssh/config and /etc/ssh/ssh_config) --------------------------
    _c("default-config", "default-config", "Host target\n  Port 2290\n  Include rjobs-oracle-default.conf\n",
       default_config=True, files={"~/.ssh/rjobs-oracle-default.conf": "User fromdefault\n"}),
    _c("default-config-absent-entry", "default-config", "Host other\n  Port 2291\n", default_config=True),
    # -- configurations ssh refuses: both resolvers must refuse them too ---------------------------
    _c("error-unknown-keyword", "errors", "Host target\n  NoSuchOption yes\n"),
    _c("error-bad-port", "errors", "Host target\n  Port abc\n"),
    _c("error-bad-port-inactive-block", "errors", "Host other\n  Port 99999\n"),
    _c("error-bad-strict-value", "errors", "Host target\n  StrictHostKeyChecking maybe\n"),
    _c("error-unmatched-quote", "errors", 'Host target\n  User "bob\n'),
    _c("error-extra-arguments", "errors", "Host target\n  Port 22 23\n"),
    _c("error-bad-match-attribute", "errors", "Match colour blue\n  Port 2\n"),
    _c("error-match-all-combined", "errors", "Match host a user b all\n  Port 2\n"),
    _c("error-host-shell-characters", "errors", "Host *\n  Port 2293\n", spec="tar$get"),
    _c("error-user-shell-characters", "errors", "Host *\n  Port 2294\n", spec="bad;user@target"),
    _c("error-missing-config-file", "errors", "", missing_config=True),
    _c("default-config-group-writable", "default-config", "Host target\n  Port 2293\n", default_config=True,
       config_mode=0o664),
    _c("error-default-config-world-writable", "errors", "Host target\n  Port 2292\n", default_config=True,
       config_mode=0o666),
]
