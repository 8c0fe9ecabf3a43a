"""DA-WSOL: the Target Sample Assigner, MMD / DANN alignment (L_d) and universum regularization (L_u)."""

from dawsol.da.loss import DALoss, DAOutput
from dawsol.da.mmd import linear_mk_mmd
from dawsol.da.tsa import kmeans3

__all__ = ["DALoss", "DAOutput", "kmeans3", "linear_mk_mmd"]
