"""Command-line interface: a thin layer over the public API, one module per subcommand."""
