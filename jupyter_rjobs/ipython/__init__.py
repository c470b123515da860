"""The IPython layer: the extension, the %rjob magics, renderers, tables, the panel. Thin views over the core."""
