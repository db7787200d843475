"""Bundled scenario files (``swarmfl sim`` with no file runs ``quickstart.toml``)."""
