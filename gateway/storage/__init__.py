"""Storage: SQLModel tables, the engine (SQLite WAL or PostgreSQL) and transactions."""
