"""Checkpoints: the format, saving, loading and resuming (`format`); released and wsolevaluation
checkpoints imported into dawsol cells (`importer`)."""
