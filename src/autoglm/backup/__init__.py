"""Backup and restore of the control plane: the database (SQLite online backup or
``pg_dump``), the audit keys and signed checkpoints, and the model registry (manifests and
signatures, never weights), in one file with a SHA-256 manifest (``archive``)."""
