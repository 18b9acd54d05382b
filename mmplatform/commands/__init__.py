"""One module per CLI noun; each registers itself with mmplatform.cli.register_command."""
