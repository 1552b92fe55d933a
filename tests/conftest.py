import pytest


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """The tiny synthetic world written once in every on-disk layout (~2 s)."""
    from benchmarks.synth.export import write_world
    root = tmp_path_factory.mktemp("synth_tiny")
    write_world(root, preset="tiny", seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_world():
    from benchmarks.synth import SyntheticWorld
    return SyntheticWorld("tiny", seed=0)
