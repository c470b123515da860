"""Remote jobs on SSH hosts: the backend, its options, host connections and the local registry."""
