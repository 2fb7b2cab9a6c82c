"""Telemetry in ClickHouse: the projectors that take batches off JetStream (projectors.py), the stores that own the
tables (metric_store.py, prediction_store.py) and the A/B report's queries (ab_queries.py)."""
