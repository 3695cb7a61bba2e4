"""vireid: a toolkit for visible-infrared person re-identification (VI-ReID).

Reads the real dataset layouts, evaluates with protocol-exact numbers, and trains the published methods.
See README.md for a tour and ``vireid --help`` for the command line.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
