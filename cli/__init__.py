"""The `hashtagkit` command-line interface (installed as hashtagkit.cli)."""
