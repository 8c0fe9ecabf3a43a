"""The protocol's hyperparameter search (docs/search.md): trials drawn from params.yaml ``search``, selected on val."""
