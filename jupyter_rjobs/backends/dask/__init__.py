"""Jobs on a Dask distributed cluster (optional: ``pip install jupyter_rjobs[dask]``).

Importing jupyter_rjobs never imports dask or distributed; the modules here that need them import
them when a cluster is first used."""
