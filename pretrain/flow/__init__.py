"""Optical flow: registered estimators, flow geometry (warp, consistency, chaining, view
composition), point trajectories and a compact on-disk flow cache."""
from .estimators import ESTIMATORS, get_estimator, register_estimator
from .geometry import chain, consistency_mask, in_view, view_flow, warp

__all__ = ["ESTIMATORS", "get_estimator", "register_estimator", "chain", "consistency_mask",
           "in_view", "view_flow", "warp"]
