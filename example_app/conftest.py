"""The example's tests use the project's database fixtures (a migrated database each)."""

from tests.conftest import admin_dsn, db, dsn, template_db

__all__ = ["admin_dsn", "db", "dsn", "template_db"]
