"""The ``t2t`` command line (``python -m t2t``). Kept apart from the libraries so that
``t2t --help`` imports nothing heavy: each subcommand imports what it needs when it runs."""

__toolkit__ = "t2tvit-edge"  # read (not imported) by t2t.cli.name_clashes: is this package ours?
