"""Command-line interface: parses options, calls the Python API, reports. No model logic lives here."""

from .app import app, main, run
from . import eval, export, models, restore, sample, train, translate  # noqa: F401  (each registers its command on `app`)

__all__ = ["app", "main", "run"]
