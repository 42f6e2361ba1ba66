"""Alembic's environment: online migrations only, on the database named by HL_DATABASE_URL.

Nothing here knows about HarmonyLite: it is the environment an ordinary SQLAlchemy application would have, with
a busy timeout because other writers (the application, the node's applier) share the database file.
"""

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)


def run_migrations_online() -> None:
    url = os.environ["HL_DATABASE_URL"]
    engine = create_engine(url, poolclass=pool.NullPool, connect_args={"timeout": 30})
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline mode is not used by these tests")
run_migrations_online()
