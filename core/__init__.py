"""The shared core: what pretraining and readout must compute or write identically, in one
place. Both `pretrain` and `readout` import it; it imports neither (nor `benchmarks`).

- `core.checkpoint`: the ``flowssl-backbone/1`` file contract (format string, the one
  builder of a checkpoint and its metadata).
- `core.reading`: reading checkpoint files, loading state dicts with an exact-key check.
- `core.trunk`: the ResNet trunk (dilated stages, output shapes).
- `core.decoders`: decoders a checkpoint carries (PooDLe's spatial decoder, PiCO's
  semantic FPN), by kind.
- `core.io`: atomic file writing and the clean-up of what a killed writer left.
- `core.runtime`: rank / world size, joining the torchrun process group, autocast.
- `core.values`: config values read the same way by pretraining configs and readout suites
  (``key=value`` overrides, number ranges).
"""
