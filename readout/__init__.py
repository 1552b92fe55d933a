"""Frozen-backbone readouts: datasets, backbone, heads, protocols and metrics.

Never imports `pretrain`; the only contract between the two is the checkpoint file.
"""
