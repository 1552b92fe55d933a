import pytest
import torch

from pretrain.data.samples import SAMPLES, FramePairs, make_samples
from pretrain.data.video import VideoSource
from pretrain.config import load_preset
from pretrain.flow import get_estimator
from pretrain.methods import METHODS, Method, get_method_class
from pretrain.methods.base import OnlineTargetMethod
from pretrain.train import PretrainSchedule, pretrain
from tests.helpers import tiny_store


def _method(name, seed=0):
    torch.manual_seed(seed)
    return get_method_class(name)(**load_preset(name, "smoke")["model"])


def _samples(tiny_root, name="byol"):
    """Frame pairs 1-3 frames apart, or the method's smoke clips."""
    source = VideoSource(tiny_root / "bdd100k" / "videos")
    if METHODS[name].samples == "pairs":
        return FramePairs(source, dt_frames=(1, 3), repeats=2)
    data = load_preset(name, "smoke")["data"]
    if METHODS[name].samples == "tracks":
        data = {**data, "trajectories": str(tiny_store(tiny_root))}
    return make_samples(METHODS[name].samples, source, data)


SCHEDULE = PretrainSchedule(steps=3, batch_size=2, optimizer="lars", lr=0.1, weight_decay=1e-6,
                            checkpoint_every=1, seed=4)


def _run(method, tiny_root, out, stop_after):
    return pretrain(method, _samples(tiny_root, method.name), SCHEDULE, out_dir=out,
                    stop_after=stop_after, estimator=get_estimator("gt"), progress=False,
                    log=lambda *_: None)


def _parameters(module, trainable: bool) -> dict:
    return {k: p.detach().clone() for k, p in module.named_parameters()
            if p.requires_grad == trainable}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_step_trains_the_encoder_and_a_killed_run_resumes_bit_identical(name, tiny_root,
                                                                           tmp_path):
    """What the contract promises for every method: the loss is the sum of its terms, a step
    moves the encoder, and a run killed after a step and resumed in a fresh process ends
    where an uninterrupted run ends."""
    killed = _method(name)
    assert isinstance(killed, Method) and killed.samples in SAMPLES
    # parameters only: BatchNorm running statistics change in any forward pass, so a check
    # that included them would pass with an optimizer that never updates a weight
    online0 = _parameters(killed.encoder, trainable=True)
    curve = _run(killed, tiny_root, tmp_path / "killed", stop_after=1)
    assert len(curve) == 1 and torch.isfinite(torch.tensor(curve[0]["loss"]))
    terms = [k for k in curve[0] if k.startswith("loss_")]
    assert terms and curve[0]["loss"] == pytest.approx(sum(curve[0][k] for k in terms))
    now = dict(killed.encoder.named_parameters())
    moved = [k for k, p in online0.items() if not torch.equal(now[k], p)]
    assert moved

    resumed = _method(name, seed=9)  # a fresh process, initialised differently
    curve = _run(resumed, tiny_root, tmp_path / "killed", stop_after=None)
    assert [c["step"] for c in curve] == [1, 2, 3]
    full = _method(name)
    _run(full, tiny_root, tmp_path / "full", stop_after=None)
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # three steps move (nearly) every encoder parameter; after one, a block whose last
    # BatchNorm starts at 0 (PixPro's zero_init_residual) gives its branch no gradient yet
    now = dict(full.encoder.named_parameters())
    moved = [k for k, p in online0.items() if not torch.equal(now[k], p)]
    assert len(moved) >= 0.9 * len(online0)
    from readout.backbone import read_checkpoint
    ck = read_checkpoint(tmp_path / "killed" / "backbone.pth")
    assert ck["meta"]["method"] == name and ck["meta"]["iterations"] == 3
    assert torch.equal(ck["state_dict"]["conv1.weight"], resumed.encoder.state_dict()[
        "body.conv1.weight"])


ONLINE_TARGET = sorted(n for n, c in METHODS.items() if issubclass(c, OnlineTargetMethod))


@pytest.mark.parametrize("name", ONLINE_TARGET)
def test_online_target_methods_move_every_target_by_ema_after_the_step(name, tiny_root,
                                                                       tmp_path):
    method = _method(name)
    assert method.target_names[:2] == ["encoder", "projector"]
    targets0 = {t: _parameters(getattr(method, "target_" + t), trainable=False)
                for t in method.target_names}
    curve = _run(method, tiny_root, tmp_path, stop_after=1)
    tau = curve[0]["tau"]
    assert tau == pytest.approx(method.ema_base)  # BYOL Sec. 3.2 at step 0
    for t, before in targets0.items():
        online = dict(getattr(method, t).named_parameters())
        for k, p in getattr(method, "target_" + t).named_parameters():
            assert not p.requires_grad
            assert torch.allclose(p, tau * before[k] + (1 - tau) * online[k],
                                  rtol=1e-6, atol=1e-7), (t, k)


@pytest.mark.parametrize("name", ["moco_v2", "densecl"])
def test_moco_methods_have_no_predictor_and_enqueue_a_batch_of_unit_keys(name, tiny_root,
                                                                         tmp_path):
    method = _method(name)
    assert not hasattr(method, "predictor") and not hasattr(method, "target_encoder")
    queues = [q for q in ("queue", "queue2") if hasattr(method, q)]
    assert len(queues) == (2 if name == "densecl" else 1)
    before = {q: getattr(method, q).clone() for q in queues}
    key0 = _parameters(method.key_encoder, trainable=False)
    _run(method, tiny_root, tmp_path, stop_after=1)
    batch, m = SCHEDULE.batch_size, method.momentum
    assert int(method.queue_ptr) == batch
    for q in queues:
        new = getattr(method, q)[:, :batch]
        assert not torch.allclose(new, before[q][:, :batch])
        assert torch.allclose(new.norm(dim=0), torch.ones(batch), atol=1e-5)
        assert torch.equal(getattr(method, q)[:, batch:], before[q][:, batch:])
    online = dict(method.encoder.named_parameters())
    for k, p in method.key_encoder.named_parameters():
        assert torch.allclose(p, m * key0[k] + (1 - m) * online[k], rtol=1e-6, atol=1e-7), k


def test_flowe_needs_flow(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="needs flow"):
        pretrain(_method("flowe"), _samples(tiny_root), SCHEDULE, out_dir=tmp_path,
                 progress=False, log=lambda *_: None)
    with pytest.raises(KeyError, match="byol_video"):
        get_method_class("simclr")


@pytest.mark.parametrize("name", ["poodle", "flowe"])
def test_views_made_in_a_loader_worker_equal_those_of_the_loop(name, tiny_root):
    """The method's view maker is plain data: a spawned loader worker makes (with the world's
    exact flow) the same views the loop makes from the frames and flow it is handed."""
    from pretrain.train import StepBatches, _flows, sample_rngs
    method, flow = _method(name), get_estimator("gt")
    with_views = StepBatches(_samples(tiny_root), SCHEDULE, view_maker=method.view_maker,
                             needs_flow=True, flow=flow)
    loader = torch.utils.data.DataLoader(with_views, batch_size=None, num_workers=1,
                                         sampler=[1], multiprocessing_context="spawn")
    (from_worker,) = list(loader)
    batch = StepBatches(_samples(tiny_root), SCHEDULE)[1]
    fwd, bwd = _flows(batch, flow)
    in_loop = method.make_views(batch["frames"], sample_rngs(SCHEDULE.seed, 1, batch["samples"]),
                                flow_fwd=fwd, flow_bwd=bwd)
    views = from_worker["views"]
    assert "frames" not in from_worker and set(views) == set(in_loop)
    assert all(torch.equal(views[k], in_loop[k]) for k in in_loop)
