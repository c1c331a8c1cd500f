"""The event log as the watch streams see it: an in-memory ring of recent events (ring.py),
refilled from the log's tail in storage (tail.py)."""
