"""Orchestration: the Dagster side (resources, incremental re-runs, provenance, model cards, lineage, execution, launchers)."""
