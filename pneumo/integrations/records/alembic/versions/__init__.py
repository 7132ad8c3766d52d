"""The records database's migrations, oldest first (Alembic reads them by file; this file is not one)."""
