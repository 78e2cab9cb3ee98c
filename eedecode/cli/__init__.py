"""The command line: ``eedecode generate``, ``bench``, ``tune``, ``agreement`` and ``train``.

All presentation (streamed text, tables, progress bars, plots) lives here and in the tools; the
layers below never import it.
"""

from .main import main

__all__ = ["main"]
