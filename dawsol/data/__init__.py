"""Datasets: the wsolevaluation metadata format, ground truth, loaders, the synthetic benchmark, sources."""
