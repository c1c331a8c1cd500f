"""Operating smsgw: the Grafana dashboard and the Prometheus alert rules (docs/operations.md)."""
