"""Workflow glue: the stages both front doors run (`stages`), the `dvc.yaml` generator (`dvcfile`),
`dawsol resolve --diff` (`settings_diff`) and `dawsol estimate` (`estimate`)."""
