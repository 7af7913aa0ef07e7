"""tiffpipe: split giant multi-page TIFFs into tiles, process them in parallel, merge them back."""

__version__ = "0.1.0"
