"""Data: the seeded generator (glossary, verifiable tasks), user sources and formats, record files."""
