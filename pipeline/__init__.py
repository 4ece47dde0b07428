"""RLHF artifact pipeline: the plain library (testable without Dagster) and the Dagster code location."""
