"""Training of one cell: objective, optimizer and schedules, data order, the epoch loop, its sinks, ``train_cell``."""

from dawsol.training.cell import TrainOutcome, train_cell

__all__ = ["TrainOutcome", "train_cell"]
