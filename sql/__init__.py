"""Schema migrations (Alembic) and the SQL that KPI reports read."""
