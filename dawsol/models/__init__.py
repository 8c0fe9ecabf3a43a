"""Backbones with their CAM modifications, the score estimator and the optimizer parameter groups."""

from dawsol.models.model import ModelOutput, WSOLModel, build_model

__all__ = ["ModelOutput", "WSOLModel", "build_model"]
