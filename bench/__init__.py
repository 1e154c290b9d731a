"""bench: a benchmark of compressed neural networks under adversarial attack.

Importing this package is cheap and has no side effects: torch, the built-in
methods and third-party plugins are loaded on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
