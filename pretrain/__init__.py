"""Self-supervised pretraining on video with optical flow.

Never imports `readout`; the only contract between the two is the checkpoint file.
"""
