"""Where jobs run: the one backend interface (base) and its implementations, each registered with it."""
