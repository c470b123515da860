"""The core: jobs, their records and states, the manager, sessions and errors. Plain Python: never imports IPython."""
