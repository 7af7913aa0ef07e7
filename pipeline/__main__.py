"""``python -m pipeline`` and the ``tiffpipe`` console script: :func:`console`, which loads
the command (:func:`pipeline.cli.console`) and runs it. A module that imports nothing: the
script's own import of it is the package's alone (``pipeline/__init__.py``, which imports
typing only), and Ctrl-C while the command loads (its imports, ~10 ms) ends it as Ctrl-C
does later, on one line, exit 130: it printed a KeyboardInterrupt traceback of the script."""


def console() -> None:
    """The ``tiffpipe`` command (:func:`pipeline.cli.console`), loaded here."""
    try:
        from pipeline.cli import console as command
    except KeyboardInterrupt:
        import sys

        print("tiffpipe: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    command()


if __name__ == "__main__":
    console()
