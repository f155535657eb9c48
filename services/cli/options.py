"""Options shared by several commands: ``--data-dir``, and the settings it overrides.

Every command that opens the data directory (its SQLite database, reports, a remote worker's
token) takes ``--data-dir DIR`` with the meaning of ``KERNELMAP_DATA_DIR``; the flag wins over
the variable. Both go through the two functions here, so that ``serve --data-dir X`` and
``keys create --data-dir X`` always mean the same database.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from services.config import Settings

DATA_DIR_HELP = (
    "the data directory: its SQLite database, reports and task files (default:"
    " KERNELMAP_DATA_DIR, else ~/.kernelmap); give the same one to `serve` and to the"
    " commands that read its database"
)


def add_data_dir(parser: argparse.ArgumentParser, help_text: str = DATA_DIR_HELP) -> None:
    """Add ``--data-dir DIR`` to ``parser`` (read back by :func:`settings_from`)."""
    parser.add_argument("--data-dir", default=None, metavar="DIR", help=help_text)


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings from the environment, with the command line's ``--data-dir`` applied.

    Parameters
    ----------
    args:
        The parsed command line; its ``data_dir`` (absent or None: not given) wins over
        ``KERNELMAP_DATA_DIR``.

    Returns
    -------
    Settings
        The service's settings; the directory itself is not created here.
    """
    settings = Settings()
    data_dir = getattr(args, "data_dir", None)
    if data_dir:
        settings = settings.model_copy(update={"data_dir": Path(data_dir).expanduser()})
    return settings
