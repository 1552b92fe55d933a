import pytest
import torch

from readout.backbone import scratch_checkpoint
from readout.datasets import build_dataset
from readout.heads import HEADS
from readout.model import build_segmentation_model
from readout.train import ReadoutSchedule, evaluate, sync_head_batchnorm, train_readout

SCHEDULE = dict(iterations=4, batch_size=2, lr=0.01, momentum=0.9, weight_decay=1e-4,
                poly_power=0.9, crop=(48, 48), resize={"short_side": [48, 72]}, flip=True,
                checkpoint_every=2, seed=3)


def _model(head="deeplab_v1", seed=0):
    torch.manual_seed(seed)
    return build_segmentation_model(scratch_checkpoint("resnet18"), head, 19,
                                    log=lambda *_: None)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_frozen_readout_trains_head_only_and_evaluates(head, tiny_root, tmp_path):
    ds = build_dataset("cityscapes", tiny_root, "train")
    model = _model(head)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    # the head's parameters, not its BatchNorm buffers (those change in any forward pass)
    head_before = {k: p.detach().clone() for k, p in model.head.named_parameters()}
    curve = train_readout(model, ds, ReadoutSchedule(**SCHEDULE), device="cpu",
                          work_dir=tmp_path, progress=False)
    assert len(curve) == 4 and all(torch.isfinite(torch.tensor(c["loss"])) for c in curve)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN stats
    moved = [k for k, p in model.head.named_parameters() if not torch.equal(head_before[k], p)]
    assert head_before and len(moved) == len(head_before)
    metrics = evaluate(model, build_dataset("cityscapes", tiny_root, "val"), num_classes=19,
                       device="cpu", progress=False)
    assert 0 <= metrics["mIoU"] <= 100 and 0 < metrics["Acc"] <= 100


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_root, tmp_path):
    ds = build_dataset("cityscapes", tiny_root, "train")
    full = _model()
    train_readout(full, ds, ReadoutSchedule(**SCHEDULE), device="cpu",
                  work_dir=tmp_path / "full", progress=False)
    killed = _model()
    curve = train_readout(killed, ds, ReadoutSchedule(**SCHEDULE), device="cpu",
                          work_dir=tmp_path / "killed", stop_after=2, progress=False)
    assert len(curve) == 2
    resumed = _model(seed=99)  # a fresh process: head initialised differently
    curve = train_readout(resumed, ds, ReadoutSchedule(**SCHEDULE), device="cpu",
                          work_dir=tmp_path / "killed", progress=False)
    assert [c["step"] for c in curve] == [1, 2, 3, 4]
    a, b = full.head.state_dict(), resumed.head.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sliding_window_covers_the_image(tiny_root):
    from readout.train import predict
    from readout.transforms import to_tensor
    model = _model().eval()
    item = build_dataset("cityscapes", tiny_root, "val")[0]
    x = to_tensor(item["image"])
    pred = predict(model, x, mode="slide", crop=(48, 48), stride=(32, 32))
    assert pred.shape == item["label"].shape
    with pytest.raises(ValueError, match="whole, slide"):
        predict(model, x, mode="tiles")


def test_hard_pixel_mining_averages_exactly_the_top_20_percent_of_pixel_losses():
    from readout.model import pixel_loss
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 6, 10), torch.randint(0, 5, (2, 6, 10))
    labels[0, 0] = 255  # ignored pixels count with loss 0, as in DeepLabCE
    per_pixel = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255,
                                                  reduction="none").flatten()
    k = int(0.2 * per_pixel.numel())  # 24 of 120
    top = per_pixel.sort(descending=True).values[:k].mean()
    assert pixel_loss(logits, labels, loss="hard_pixel_mining") == pytest.approx(top.item())
    assert pixel_loss(logits, labels) == pytest.approx(per_pixel[per_pixel > 0].mean().item())
    assert pixel_loss(logits, labels, loss="hard_pixel_mining") > pixel_loss(logits, labels)


def test_norm_layers_get_their_own_weight_decay():
    from readout.train import parameter_groups
    model = _model("deeplab_v3")
    groups = parameter_groups(model, ReadoutSchedule(**SCHEDULE, weight_decay_norm=0.0))
    rest, norm = groups
    assert norm["weight_decay"] == 0.0 and "weight_decay" not in rest
    bn = [m for m in model.head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for m in bn for p in m.parameters()} == {id(p) for p in norm["params"]}
    assert len(rest["params"]) + len(norm["params"]) == len(model.trainable_parameters())
    assert len(parameter_groups(model, ReadoutSchedule(**SCHEDULE))) == 1


def test_warmup_multiplies_the_poly_decay():
    from readout.train import learning_rate
    s = ReadoutSchedule(**{**SCHEDULE, "iterations": 100}, warmup_iterations=10)
    assert learning_rate(s, 0) == pytest.approx(0.01 * 0.001)
    assert learning_rate(s, 5) == pytest.approx(0.01 * (1 - 0.05) ** 0.9 * (0.001 * 0.5 + 0.5))
    assert learning_rate(s, 10) == pytest.approx(0.01 * 0.9 ** 0.9)


def test_a_fixed_test_size_predicts_there_and_scores_at_the_native_size():
    from readout.train import predict
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return {"out": x[:, :2]}

    image = torch.zeros(3, 36, 64)
    image[0, :, :20] = 1.0  # class 0 on the left, class 1 on the right
    image[1, :, 20:] = 1.0
    pred = predict(Probe(), image, resize=(64, 128))
    assert seen == [(64, 128)] and pred.shape == (36, 64)
    assert (pred[:, :18] == 0).all() and (pred[:, 22:] == 1).all()


@pytest.mark.parametrize("head", ["deeplab_v3", "upernet"])
def test_under_ddp_on_cuda_the_heads_batchnorm_is_synced_and_the_frozen_backbones_is_not(head):
    model = _model(head)
    batchnorms = [m for m in model.head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    sync_head_batchnorm(model, "cpu")  # gloo: SyncBatchNorm cannot run there
    assert all(isinstance(m, torch.nn.BatchNorm2d) for m in model.head.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    state = {k: v.clone() for k, v in model.head.state_dict().items()}
    sync_head_batchnorm(model, "cuda")  # converting needs no GPU; only running it does
    synced = [m for m in model.head.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert batchnorms and len(synced) == len(batchnorms)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.backbone.modules())
    after = model.head.state_dict()  # same keys and tensors: checkpoints load either way
    assert list(after) == list(state) and all(torch.equal(state[k], after[k]) for k in state)
