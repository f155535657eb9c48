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


def add_llm_flags(r: argparse.ArgumentParser) -> None:
    """``kernelmap run``'s LLM search flags (the endpoint is KERNELMAP_LLM_*, never a flag)."""
    g = r.add_argument_group("LLM search (endpoint: KERNELMAP_LLM_BASE_URL, _MODELS, _API_KEY)")
    g.add_argument("--llm", action="store_true", help="add the LLM emitter to the search")
    g.add_argument(
        "--llm-model",
        action="append",
        default=[],
        metavar="NAME[:WEIGHT]",
        help="a model to ask, among KERNELMAP_LLM_MODELS (repeatable; default all of them)",
    )
    numbers = [
        ("--llm-max-tokens", int, "N", "completion tokens per request (default 4096)"),
        ("--llm-max-requests", int, "N", "requests the run may send (KERNELMAP_LLM_MAX_REQUESTS)"),
        (
            "--llm-max-total-tokens",
            int,
            "N",
            "prompt + completion tokens the run may spend (KERNELMAP_LLM_MAX_TOTAL_TOKENS)",
        ),
        ("--llm-max-cost", float, "X", "cost the run may spend, in KERNELMAP_LLM_PRICES' unit"),
    ]
    for flag, kind, metavar, text in numbers:
        g.add_argument(flag, type=kind, default=None, metavar=metavar, help=text)
