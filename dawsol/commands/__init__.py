"""Subcommands of the ``dawsol`` CLI (see dawsol.cli)."""
