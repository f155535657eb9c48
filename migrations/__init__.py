"""Alembic migrations of the kernelmap database (no ``alembic.ini``: see ``archive.db``).

``env.py`` runs them; ``versions/`` holds the history, one file per revision. To write a
revision after changing ``archive/models.py``::

    from alembic import command
    from archive.db import alembic_config
    command.revision(alembic_config("sqlite:////tmp/k.db"), message="...", autogenerate=True)

(upgrade that database to head first), then review the file: JSONB columns must say
``astext_type=sa.Text()``.
"""
