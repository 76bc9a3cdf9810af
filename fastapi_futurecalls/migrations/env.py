"""Alembic environment of ``fastapi-futurecalls migrate`` (it ships in the wheel).

The command builds the alembic configuration itself (no alembic.ini), with this package
directory as the script location; see :mod:`fastapi_futurecalls.migrations.migrate`.
"""

from fastapi_futurecalls.migrations.migrate import run_environment

run_environment()
