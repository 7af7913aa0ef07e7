"""``python -m pipeline``: the ``tiffpipe`` command (:func:`pipeline.cli.console`), for an
environment whose scripts folder is not on the PATH."""

from pipeline.cli import console

if __name__ == "__main__":
    console()
