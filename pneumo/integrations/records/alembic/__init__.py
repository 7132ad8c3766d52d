"""The records database's Alembic environment (env.py) and migrations (versions/), run from code by
pneumo.integrations.records.db.upgrade: no alembic.ini. A package so that an installed pneumo ships them."""
