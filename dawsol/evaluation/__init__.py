"""Evaluating a model: a cell's evaluation (`cell`), scoring a split (`scoring`), post-hoc map
extractors (`posthoc`), CAM files (`cam_files`), figures (`figures`) and `dawsol localize` (`localize`)."""
