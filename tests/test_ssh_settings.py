"""How a host spec becomes connection settings (no network): ssh_config, hosts.ini, explicit
options, the choice of resolver, and ``%rjob host show``. What ssh_config means is checked against
OpenSSH itself in tests/test_ssh_config_oracle.py; here: what jupyter_rjobs adds on top."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

import pytest
from helpers import unavailable
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from jupyter_rjobs import HostError, HostSettings, resolve_host
from jupyter_rjobs.backends.base import FrameApplier
from jupyter_rjobs.backends.remote.ssh.config import parse_host_spec, settings_lines
from jupyter_rjobs.core.job import Job, JobKind
from jupyter_rjobs.ipython.extension import get_manager

RESOLVERS = ["openssh", "python"]


@pytest.fixture
def no_hosts_ini(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RJOBS_HOSTS", str(tmp_path / "none.ini"))
    monkeypatch.delenv("JUPYTER_RJOBS_SSH_RESOLVER", raising=False)


@pytest.fixture
def ssh_client() -> str:
    path = shutil.which("ssh")
    if path is None:
        unavailable("the comparison with OpenSSH", "its client (ssh) on PATH")
    return path


@pytest.fixture(params=RESOLVERS)
def resolver(request, ssh_client, monkeypatch) -> str:
    """Each test runs with both resolvers, chosen the way a user does: JUPYTER_RJOBS_SSH_RESOLVER."""
    monkeypatch.setenv("JUPYTER_RJOBS_SSH_RESOLVER", request.param)
    return request.param


def ssh_g(ssh_client: str, *args: str) -> dict[str, str]:
    out = subprocess.run([ssh_client, "-G", *args], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL).stdout
    return {line.partition(" ")[0]: line.partition(" ")[2] for line in reversed(out.splitlines())}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("server01", (None, "server01", None)),
        ("alice@server01", ("alice", "server01", None)),
        ("alice@10.0.0.5:2222", ("alice", "10.0.0.5", 2222)),
        ("[::1]:2200", (None, "::1", 2200)),
        ("ssh://bob@j1:2222", ("bob", "j1", 2222)),
    ],
)
def test_host_specs(spec, expected):
    assert parse_host_spec(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [("", "not a host"), ("a b", "not a host"), ("-oProxyCommand=x", "not a host"),
                                               ("h:70000", "not a port")])
def test_bad_host_specs(spec, message):
    with pytest.raises(HostError, match=message):
        parse_host_spec(spec)


def test_ssh_config_is_honoured(tmp_path, no_hosts_ini, resolver):
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host db\n  HostName 10.1.2.3\n  Port 2200\n  User carol\n  IdentityFile ~/.ssh/db_key\n"
        "  ProxyJump bastion1,bastion2\n  UserKnownHostsFile /k/known\n  StrictHostKeyChecking accept-new\n"
    )
    settings = resolve_host("db", ssh_config=str(config))
    assert settings.resolved_by == resolver
    assert (settings.hostname, settings.port, settings.user) == ("10.1.2.3", 2200, "carol")
    assert settings.proxy_jump == ("bastion1", "bastion2")
    assert settings.identity_files[0].endswith("/.ssh/db_key") and not settings.identity_files[0].startswith("~")
    assert settings.known_hosts_files == ("/k/known",)
    assert settings.accept_new is True
    assert settings.known_hosts_name == "[10.1.2.3]:2200"
    explicit = resolve_host("dave@db:2300", ssh_config=str(config))
    assert (explicit.user, explicit.port) == ("dave", 2300)


def test_strict_by_default_and_hosts_ini(tmp_path, monkeypatch, resolver):
    ini = tmp_path / "hosts.ini"
    ini.write_text("[*]\npython = /usr/bin/python3\n[gpu1]\npython = /opt/conda/bin/python\nuser = ml\n")
    monkeypatch.setenv("JUPYTER_RJOBS_HOSTS", str(ini))
    empty = tmp_path / "empty_config"
    empty.write_text("")
    settings = resolve_host("gpu1", ssh_config=str(empty))
    assert settings.accept_new is False and settings.strict_host_key_checking == "ask"
    assert (settings.python, settings.user) == ("/opt/conda/bin/python", "ml")
    assert resolve_host("other", ssh_config=str(empty)).python == "/usr/bin/python3"
    assert resolve_host("gpu1", ssh_config=str(empty), python="/x/python").python == "/x/python"


def test_hosts_ini_user_and_port_act_like_ssh_l_and_p(tmp_path, monkeypatch, resolver, ssh_client):
    """hosts.ini's user and port are given to ssh as -l/-p: ssh_config's Match user sees them."""
    ini = tmp_path / "hosts.ini"
    ini.write_text("[gpu1]\nuser = ml\nport = 2022\naccept_new_host = yes\n")
    monkeypatch.setenv("JUPYTER_RJOBS_HOSTS", str(ini))
    config = tmp_path / "ssh_config"
    config.write_text("Host gpu1\n  User ignored\n  Port 1\nMatch user ml\n  HostName ml.example\n")
    settings = resolve_host("gpu1", ssh_config=str(config))
    openssh = ssh_g(ssh_client, "-F", str(config), "-l", "ml", "-p", "2022", "gpu1")
    assert (settings.user, str(settings.port), settings.hostname) == (openssh["user"], openssh["port"], openssh["hostname"])
    assert settings.accept_new is True


def test_accept_new_is_for_this_host_only(tmp_path, no_hosts_ini, resolver):
    config = tmp_path / "ssh_config"
    config.write_text("Host target\n  StrictHostKeyChecking accept-new\n  ProxyJump bastion\nHost bastion\n  Port 2201\n")
    target = resolve_host("target", ssh_config=str(config))
    assert target.accept_new is True and target.proxy_jump == ("bastion",)
    jump = resolve_host(target.proxy_jump[0], ssh_config=str(config))
    assert jump.accept_new is False and jump.strict_host_key_checking == "ask"
    assert resolve_host("bastion", ssh_config=str(config), accept_new=True).accept_new is True


def test_a_refused_config_is_one_line_naming_host_and_file(tmp_path, no_hosts_ini, resolver):
    config = tmp_path / "ssh_config"
    config.write_text("Host target\n  Port abc\n")
    with pytest.raises(HostError) as refused:
        resolve_host("target", ssh_config=str(config))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("target: ") and str(config) in message and "abc" in message
    with pytest.raises(HostError, match="no-such-file"):
        resolve_host("target", ssh_config=str(tmp_path / "no-such-file"))


def test_the_resolver_is_chosen_by_environment_and_by_what_is_installed(tmp_path, no_hosts_ini, monkeypatch, ssh_client):
    config = tmp_path / "ssh_config"
    config.write_text("Host target\n  Port 2201\n")
    assert resolve_host("target", ssh_config=str(config)).resolved_by == "openssh"  # ssh is installed
    monkeypatch.setenv("JUPYTER_RJOBS_SSH_RESOLVER", "python")
    assert resolve_host("target", ssh_config=str(config)).port == 2201
    assert resolve_host("target", ssh_config=str(config)).resolved_by == "python"
    monkeypatch.setenv("JUPYTER_RJOBS_SSH_RESOLVER", "putty")
    with pytest.raises(HostError, match="unknown resolver 'putty'; set it to openssh or python"):
        resolve_host("target", ssh_config=str(config))
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    monkeypatch.setenv("PATH", str(empty_path))  # a machine without an ssh client
    monkeypatch.delenv("JUPYTER_RJOBS_SSH_RESOLVER")
    assert resolve_host("target", ssh_config=str(config)).resolved_by == "python"
    monkeypatch.setenv("JUPYTER_RJOBS_SSH_RESOLVER", "openssh")
    with pytest.raises(HostError, match="no ssh client on PATH.*JUPYTER_RJOBS_SSH_RESOLVER=python"):
        resolve_host("target", ssh_config=str(config))


def test_host_show_prints_the_settings_like_ssh_g(ip, tmp_path, no_hosts_ini, resolver, ssh_client):
    config = tmp_path / "ssh_config"
    config.write_text("Host db\n  HostName DB.Example\n  Port 2200\n  User carol\n  IdentityFile %d/.ssh/db-%r\n")
    manager = get_manager(ip)
    previous, manager.ssh_config = manager.ssh_config, str(config)
    try:
        with capture_output() as out:
            assert ip.run_line_magic("rjob", "host show db") is None
        lines = out.stdout.splitlines()
        assert lines == settings_lines(resolve_host("db", ssh_config=str(config)))
        shown = {line.partition(" ")[0]: line.partition(" ")[2] for line in lines}
        openssh = ssh_g(ssh_client, "-F", str(config), "db")
        assert all(key == key.lower() for key in shown)
        for key in ("hostname", "port", "user", "stricthostkeychecking", "userknownhostsfile", "globalknownhostsfile"):
            assert shown[key] == openssh[key], key
        assert shown["identityfile"] == pwd.getpwuid(os.getuid()).pw_dir + "/.ssh/db-carol"  # %d: the passwd home, as ssh
        with pytest.raises(UsageError) as bad:
            ip.run_line_magic("rjob", "host show 'a b'")
        assert "\n" not in str(bad.value) and "not a host" in str(bad.value)
        with pytest.raises(UsageError, match="invalid choice"):
            ip.run_line_magic("rjob", "host list db")
    finally:
        manager.ssh_config = previous


def test_resolve_host_is_public_api():
    import jupyter_rjobs

    assert jupyter_rjobs.resolve_host is resolve_host and "resolve_host" in jupyter_rjobs.__all__
    assert isinstance(HostSettings(alias="a", hostname="a"), HostSettings)


def test_an_unloadable_value_names_both_python_versions():
    job = Job(1, JobKind.REMOTE, "x", location="h")
    apply = FrameApplier(job, python_version="3.7.1")  # never this kernel's Python
    apply({"op": "record", "seq": 1, "kind": "value", "data": {"format": "pickle"}}, [bytearray(b"not a pickle")])
    apply({"op": "record", "seq": 2, "kind": "state", "data": "Completed"}, [])
    assert job.error is not None and "the job ran on Python 3.7.1, this kernel is Python 3." in job.error.evalue
    assert str(job.state) == "Failed"
