"""Alembic environment of fitsflow's site database: run with the connection that
:func:`fitsflow.core.migrations.migrate` hands over (never with a URL of its own)."""

from __future__ import annotations

from alembic import context

from fitsflow.core.migrations import VERSION_TABLE

connection = context.config.attributes["connection"]
# The caller holds the transaction (and the lock): the whole upgrade commits at once.
context.configure(connection=connection, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")  # SQLite alters tables by copy
with context.begin_transaction():
    context.run_migrations()
