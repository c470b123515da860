"""How a host spec becomes connection settings (no network): ssh_config, hosts.ini, explicit options."""

from __future__ import annotations

import pytest

from jupyter_rjobs import HostError
from jupyter_rjobs._backend import FrameApplier
from jupyter_rjobs._job import Job, JobKind
from jupyter_rjobs._ssh import parse_host_spec, resolve_host


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("server01", (None, "server01", None)),
        ("alice@server01", ("alice", "server01", None)),
        ("alice@10.0.0.5:2222", ("alice", "10.0.0.5", 2222)),
        ("[::1]:2200", (None, "::1", 2200)),
    ],
)
def test_host_specs(spec, expected):
    assert parse_host_spec(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [("", "not a host"), ("a b", "not a host"), ("h:70000", "not a port")])
def test_bad_host_specs(spec, message):
    with pytest.raises(HostError, match=message):
        parse_host_spec(spec)


def test_ssh_config_is_honoured(tmp_path, monkeypatch):
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host db\n  HostName 10.1.2.3\n  Port 2200\n  User carol\n  IdentityFile ~/.ssh/db_key\n"
        "  ProxyJump bastion1,bastion2\n  UserKnownHostsFile /k/known\n  StrictHostKeyChecking accept-new\n"
    )
    monkeypatch.setenv("JUPYTER_RJOBS_HOSTS", str(tmp_path / "none.ini"))
    settings = resolve_host("db", ssh_config=str(config))
    assert (settings.hostname, settings.port, settings.user) == ("10.1.2.3", 2200, "carol")
    assert settings.proxy_jump == ("bastion1", "bastion2")
    assert settings.identity_files[0].endswith("/.ssh/db_key")
    assert settings.known_hosts_files[0] == "/k/known"
    assert settings.accept_new is True
    assert settings.known_hosts_name == "[10.1.2.3]:2200"
    explicit = resolve_host("dave@db:2300", ssh_config=str(config))
    assert (explicit.user, explicit.port) == ("dave", 2300)


def test_strict_by_default_and_hosts_ini(tmp_path, monkeypatch):
    ini = tmp_path / "hosts.ini"
    ini.write_text("[*]\npython = /usr/bin/python3\n[gpu1]\npython = /opt/conda/bin/python\nuser = ml\n")
    monkeypatch.setenv("JUPYTER_RJOBS_HOSTS", str(ini))
    settings = resolve_host("gpu1", ssh_config=str(tmp_path / "missing"))
    assert settings.accept_new is False
    assert (settings.python, settings.user) == ("/opt/conda/bin/python", "ml")
    assert resolve_host("other", ssh_config=str(tmp_path / "missing")).python == "/usr/bin/python3"
    assert resolve_host("gpu1", ssh_config=str(tmp_path / "missing"), python="/x/python").python == "/x/python"


def test_an_unloadable_value_names_both_python_versions():
    job = Job(1, JobKind.REMOTE, "x", location="h")
    apply = FrameApplier(job, python_version="3.7.1")  # never this kernel's Python
    apply({"op": "record", "seq": 1, "kind": "value", "data": {"format": "pickle"}}, [bytearray(b"not a pickle")])
    apply({"op": "record", "seq": 2, "kind": "state", "data": "Completed"}, [])
    assert job.error is not None and "the job ran on Python 3.7.1, this kernel is Python 3." in job.error.evalue
    assert str(job.state) == "Failed"
