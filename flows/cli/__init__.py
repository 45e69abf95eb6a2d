"""The `pneumo` command, one module per group of subcommands; main.py wires them."""
