"""The run configuration: typed sections, presets, overrides from the command line or a form."""
