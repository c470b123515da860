"""The SSH client layer (paramiko), read and checked as OpenSSH does: config, known_hosts, logins."""
