"""`bench checkpoint import` of the files the authors of PooDLe, FlowE, PixPro, DenseCL, BYOL
and MoCo v2 released. Each file is built here with the authors' key names (where each layout
is read from: benchmarks.checkpoint_layouts) from one torchvision ResNet-50, with the keys
that must be dropped (teacher copies, heads, flow nets, queues) and the Python objects the
authors' files hold; the imported backbone must compute the features of that ResNet-50."""
import argparse
import collections
import os
import pickle
import sys
import types
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision

from benchmarks import safe_unpickle
from benchmarks.checkpoint_layouts import IMPORT_SOURCES
from benchmarks.cli import main
from benchmarks.convert import IMPORTERS, export_detectron2, import_byol, import_pixpro
from core.decoders import SpatialDecoder
from core.inputs import IMAGENET
from readout.backbone import (CheckpointError, build_backbone, read_checkpoint,
                              scratch_checkpoint)
from tests.helpers import authors_poodle_decode, authors_poodle_decoder

# file kind -> `--from` source; densecl: a raw mmcv training file, densecl_released: the
# extracted backbone of tools/extract_backbone_weights.py
FILES = {"poodle": "poodle", "flowe": "flowe", "pixpro": "pixpro", "densecl": "densecl",
         "densecl_released": "densecl", "byol": "byol", "moco_v2": "moco_v2"}
STUBBED = {"poodle": "_Config", "flowe": "_Config", "pixpro": "argparse.Namespace",
           "byol": "LarsState"}  # a Python object of the authors' file, read as a stub
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _away_from_identity(module: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm affine and statistics random, so a mapping mistake changes the output."""
    for bn in [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.1)
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return module.eval()


def _other(state: dict) -> dict:
    """A teacher / momentum copy: every weight different."""
    return {k: v * 1.01 if v.is_floating_point() else v.clone() for k, v in state.items()}


@pytest.fixture(scope="module")
def weights():
    """The online ResNet-50 (eval mode), its state (no fc, as the authors' encoders have
    none or drop it) and a target copy; PooDLe's online and target decoder states."""
    torch.manual_seed(0)
    net = _away_from_identity(torchvision.models.resnet50(weights=None))
    online = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    decoder = _away_from_identity(authors_poodle_decoder())
    return {"net": net, "online": online, "target": _other(online), "decoder": decoder,
            "decoder_online": decoder.state_dict(),
            "decoder_target": _other(decoder.state_dict())}


class _Config:
    """Stands in for the omegaconf DictConfig PooDLe and FlowE save under 'args'."""

    def __init__(self, **values):
        self.__dict__.update(values)


def _prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


def _head(prefix: str, names=("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                              "1.running_var", "1.num_batches_tracked", "3.weight",
                              "3.bias")) -> dict:
    """A (tiny) Conv-BN-ReLU-Conv projector / predictor's keys."""
    return {prefix + n: torch.zeros(()) if "num_batches" in n else torch.ones(4) for n in names}


OPTIMIZER = {"state": {}, "param_groups": [{"lr": 5e-4, "weight_decay": 0.0, "params": [0]}]}


def _poodle(w) -> dict:
    """agentic-learning-ai-lab/poodle src/utils/misc.py save_model of src/models/poodle.py."""
    model = {**_prefixed("backbone.", w["online"]),
             **_prefixed("teacher_backbone.", w["target"]),
             **w["decoder_online"], **_prefixed("teacher_", w["decoder_target"]),
             "flow_model.fnet.conv1.weight": torch.ones(64, 3, 7, 7),
             "flow_model.cnet.norm1.running_mean": torch.zeros(64)}
    for head in ("dense_projector.", "dense_predictor.", "pooled_projector.",
                 "pooled_predictor.", "teacher_dense_projector.", "teacher_pooled_projector."):
        model.update(_head(head))
    return {"model": model, "optimizer": OPTIMIZER, "epoch": 99, "scaler": {"scale": 65536.0},
            "args": _Config(model="poodle", decoder_dims=[2048, 2048])}


def _flowe(w) -> dict:
    """src/models/flowe.py (timm ResNet-50 encoder), saved as PooDLe's."""
    no_bias = ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
               "1.num_batches_tracked", "3.weight", "3.bias")
    model = {**_prefixed("encoder.", w["online"]), **_prefixed("target_encoder.", w["target"]),
             **_head("projector.", no_bias), **_head("predictor.", no_bias),
             **_head("target_projector.", no_bias), "flownet.fnet.conv1.weight": torch.ones(3)}
    return {"model": model, "optimizer": OPTIMIZER, "epoch": 99, "scaler": {"scale": 1.0},
            "args": _Config(model="flowe")}


def _pixpro(w) -> dict:
    """zdaxie/PixPro main_pretrain.py save_checkpoint (a raw file, with 'opt')."""
    mlp2d = ("linear1.weight", "linear1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean",
             "bn1.running_var", "bn1.num_batches_tracked", "linear2.weight", "linear2.bias")
    model = {**_prefixed("module.encoder.", w["online"]),
             **_prefixed("module.encoder_k.", w["target"]),
             **_head("module.projector.", mlp2d), **_head("module.projector_k.", mlp2d),
             "module.value_transform.weight": torch.ones(4, 4, 1, 1),
             "module.value_transform.bias": torch.ones(4)}
    return {"opt": argparse.Namespace(arch="resnet50", head_type="early_return"),
            "model": model, "optimizer": OPTIMIZER, "scheduler": {"last_epoch": 5},
            "epoch": 100}


def _densecl(w) -> dict:
    """WXinlong/DenseCL raw mmcv checkpoint (backbone aliases encoder_q.0)."""
    neck = ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp2.0.weight",
            "mlp2.0.bias", "mlp2.2.weight", "mlp2.2.bias")
    state = {**_prefixed("backbone.", w["online"]), **_prefixed("encoder_q.0.", w["online"]),
             **_head("encoder_q.1.", neck), **_prefixed("encoder_k.0.", w["target"]),
             **_head("encoder_k.1.", neck), "queue": torch.ones(4, 8),
             "queue_ptr": torch.zeros(1, dtype=torch.long), "queue2": torch.ones(4, 8),
             "queue2_ptr": torch.zeros(1, dtype=torch.long)}
    meta = {"epoch": 200, "iter": 1000, "mmcv_version": "0.4.3",
            "config": "model = dict(type='DenseCL', pretrained=None)"}
    return {"meta": meta, "state_dict": state, "optimizer": OPTIMIZER}


def _densecl_released(w) -> dict:
    """DenseCL tools/extract_backbone_weights.py."""
    return {"state_dict": dict(w["online"]), "author": "DenseCL"}


def _moco_v2(w) -> dict:
    """facebookresearch/moco main_moco.py save_checkpoint (--mlp: fc is an MLP head)."""
    fc = ("fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias")
    state = {**_prefixed("module.encoder_q.", w["online"]), **_head("module.encoder_q.", fc),
             **_prefixed("module.encoder_k.", w["target"]), **_head("module.encoder_k.", fc),
             "module.queue": torch.ones(4, 8), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": OPTIMIZER}


# --- BYOL: haiku names (google-deepmind/deepmind-research byol/utils/networks.py), written
# here independently of the importer's mapping
class FlatMapping(dict):
    """haiku's FlatMapping as pickled in 2020: ``__reduce__`` -> (FlatMapping, (mapping,))."""

    def __reduce__(self):
        return FlatMapping, (dict(self),)


FlatMapping.__module__ = "haiku._src.data_structures"
ByolState = collections.namedtuple("_ByolExperimentState", ["online_params", "target_params",
                                                             "online_state", "target_state",
                                                             "opt_state"],
                                   module="byol.byol_experiment")
LarsState = collections.namedtuple("LarsState", ["mu"], module="byol.utils.optimizers")


def _haiku(state: dict) -> tuple[FlatMapping, FlatMapping]:
    """BYOL's haiku params and state of a torchvision ResNet-50 state: HWIO kernels,
    (1, 1, 1, C) BatchNorm scale/offset, running statistics as the EMAs' 'average'."""
    params, bn_state, root = {}, {}, "res_net50/~/"

    def conv(path, key):
        params[root + path] = {"w": state[key].permute(2, 3, 1, 0).numpy()}

    def bn(path, key):
        def c(name):
            return state[f"{key}.{name}"].reshape(1, 1, 1, -1).numpy()
        params[root + path] = {"scale": c("weight"), "offset": c("bias")}
        for ema, stat in (("mean_ema", "running_mean"), ("var_ema", "running_var")):
            bn_state[f"{root}{path}/~/{ema}"] = {"counter": np.int32(7), "hidden": c(stat) / 2,
                                                 "average": c(stat)}

    conv("initial_conv", "conv1.weight")
    bn("initial_batchnorm", "bn1")
    for g, blocks in enumerate((3, 4, 6, 3)):
        for b in range(blocks):
            block, layer = f"block_group_{g}/~/block_{b}/~/", f"layer{g + 1}.{b}."
            for k in range(3):
                conv(f"{block}conv_{k}", f"{layer}conv{k + 1}.weight")
                bn(f"{block}batchnorm_{k}", f"{layer}bn{k + 1}")
            if b == 0:
                conv(f"{block}shortcut_conv", f"{layer}downsample.0.weight")
                bn(f"{block}shortcut_batchnorm", f"{layer}downsample.1")
    one = np.ones((1, 1, 1, 4), np.float32)
    for head in ("projector", "predictor"):
        params.update({f"{head}/~/linear": {"w": np.ones((4, 4)), "b": np.ones(4)},
                       f"{head}/~/batch_norm": {"scale": one, "offset": one},
                       f"{head}/~/linear_1": {"w": np.ones((4, 4))}})
        bn_state.update({f"{head}/~/batch_norm/~/{e}": {"counter": np.int32(7), "hidden": one,
                                                        "average": one}
                         for e in ("mean_ema", "var_ema")})
    params["classifier"] = {"w": np.ones((4, 10)), "b": np.ones(10)}
    return (FlatMapping({k: FlatMapping(v) for k, v in params.items()}),
            FlatMapping({k: FlatMapping(v) for k, v in bn_state.items()}))


def _write_byol(w, path) -> None:
    """byol/utils/checkpointing.py: {'experiment_state', 'step', 'rng'}, pickle protocol 2."""
    (online, online_state), (target, target_state) = _haiku(w["online"]), _haiku(w["target"])
    obj = {"experiment_state": ByolState(online, target, online_state, target_state,
                                         LarsState(mu=np.zeros(3))),
           "step": 300000, "rng": np.array([0, 42], np.uint32)}
    modules = {}
    for name, attrs in (("haiku._src.data_structures", {"FlatMapping": FlatMapping}),
                        ("byol.byol_experiment", {"_ByolExperimentState": ByolState}),
                        ("byol.utils.optimizers", {"LarsState": LarsState}),
                        ("haiku", {}), ("haiku._src", {}), ("byol", {}), ("byol.utils", {})):
        modules[name] = types.ModuleType(name)
        modules[name].__dict__.update(attrs)
    with mock.patch.dict(sys.modules, modules):  # only for pickling; never imported back
        path.write_bytes(pickle.dumps(obj, protocol=2))


BUILDERS = {"poodle": _poodle, "flowe": _flowe, "pixpro": _pixpro, "densecl": _densecl,
            "densecl_released": _densecl_released, "moco_v2": _moco_v2}


@pytest.fixture(scope="module")
def authors_file(tmp_path_factory, weights):
    """kind -> the path of that authors' file (written once per module)."""
    folder, made = tmp_path_factory.mktemp("authors"), {}

    def make(kind: str):
        if kind not in made:
            path = folder / f"{kind}.{'pkl' if kind == 'byol' else 'pth'}"
            if kind == "byol":
                _write_byol(weights, path)
            else:  # MoCo v2 was released in 2020: torch's legacy (pre-1.6) format
                torch.save(BUILDERS[kind](weights), path,
                           _use_new_zipfile_serialization=kind != "moco_v2")
            made[kind] = path
        return made[kind]
    return make


def _features(net, x) -> list:
    """res2..res5 of a torchvision ResNet."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        out.append(x)
    return out


@pytest.mark.parametrize("kind", sorted(FILES))
def test_the_imported_backbone_computes_the_authors_features(kind, authors_file, weights):
    lines = []
    path = authors_file(kind)
    ck = IMPORTERS[FILES[kind]](path, log=lines.append)
    assert ck["meta"]["method"] == f"imported:{FILES[kind]}"
    assert ck["meta"]["imported_weights"] == "online"
    assert ck["meta"]["input"] == IMAGENET.meta()  # what the authors' pipelines feed
    online = weights["online"]
    kept = [k for k in online if not k.endswith("num_batches_tracked")]
    assert all(torch.equal(ck["state_dict"][k], online[k]) for k in kept)
    assert sum(" -> " in line for line in lines) >= len(kept)  # every mapped key printed
    if kind != "densecl_released":
        assert sum(line.startswith("dropping ") for line in lines) == 1
    if kind in STUBBED:
        assert any("inert stubs" in line and STUBBED[kind] in line for line in lines)
    with torch.no_grad():
        ours = build_backbone(ck, log=lambda *_: None)(X)
        theirs = _features(weights["net"], X)
        for name, expected in zip(("res2", "res3", "res4", "res5"), theirs):
            assert (ours[name] - expected).abs().max() < 1e-5, name
        assert theirs[-1].abs().max() > 1e-2
        if kind == "poodle":
            entry = ck["decoder"]
            assert entry["kind"] == "sdm" and entry["order"] == "authors"
            decoder = SpatialDecoder.from_checkpoint_entry(entry).eval()
            decoder.load_state_dict(entry["state_dict"], strict=True)
            expected = authors_poodle_decode(weights["decoder"], theirs[1:])
            assert (decoder(ours) - expected).abs().max() < 1e-5
        else:
            assert ck["decoder"] is None
    assert ck["meta"].get("authors_output_stride") == (8 if kind == "flowe" else None)


@pytest.mark.parametrize("kind", sorted(set(FILES) - {"densecl_released"}))
def test_weights_target_picks_the_teacher(kind, authors_file, weights):
    ck = IMPORTERS[FILES[kind]](authors_file(kind), weights="target", log=lambda *_: None)
    assert ck["meta"]["imported_weights"] == "target"
    assert all(torch.equal(ck["state_dict"][k], v) for k, v in weights["target"].items()
               if not k.endswith("num_batches_tracked"))
    if kind == "poodle":
        teacher = {k[len("decoder_"):]: v for k, v in weights["decoder_target"].items()}
        assert all(torch.equal(ck["decoder"]["state_dict"][k], v) for k, v in teacher.items()
                   if not k.endswith("num_batches_tracked"))


def test_a_released_densecl_file_has_no_target_weights(authors_file):
    path = authors_file("densecl_released")
    with pytest.raises(CheckpointError, match="holds no target weights"):
        IMPORTERS["densecl"](path, weights="target", log=lambda *_: None)


@pytest.mark.parametrize("source, obj, key", [
    ("poodle", {"model": {"backbone.conv1.weight": torch.ones(1), "mystery.weight":
                          torch.ones(1)}, "args": _Config()}, "mystery.weight"),
    ("poodle", {"model": {"backbone.conv1.weight": torch.ones(1), "backbone.fc.weight":
                          torch.ones(1)}}, "backbone.fc.weight"),
    ("flowe", {"model": {"target_encoder.conv1.weight": torch.ones(1),
                         "encoder_ema.conv1.weight": torch.ones(1)}}, "encoder_ema.conv1.weight"),
    ("pixpro", {"model": {"module.encoder.conv1.weight": torch.ones(1),
                          "module.encoder.layer5.0.conv1.weight": torch.ones(1)}},
     "module.encoder.layer5.0.conv1.weight"),
    ("moco_v2", {"state_dict": {"module.encoder_q.conv1.weight": torch.ones(1),
                                "module.predictor.weight": torch.ones(1)}},
     "module.predictor.weight"),
    ("densecl", {"state_dict": {"conv1.weight": torch.ones(1), "neck.mlp.0.weight":
                                torch.ones(1)}}, "neck.mlp.0.weight"),
])
def test_a_key_neither_mapped_nor_known_to_drop_fails_naming_it(source, obj, key, tmp_path):
    path = tmp_path / f"{source}.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as e:
        IMPORTERS[source](path, log=lambda *_: None)
    message = str(e.value)
    assert str(path) in message and key in message and "\n" not in message


def test_a_byol_entry_neither_mapped_nor_known_to_drop_fails_naming_it(tmp_path):
    params = {"res_net50/~/initial_conv": {"w": np.ones((7, 7, 3, 64), np.float32)},
              "res_net50/~/mystery": {"w": np.ones(3, np.float32)}}
    obj = {"experiment_state": {"online_params": params, "online_state": {}}}
    (tmp_path / "byol.pkl").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(CheckpointError, match="byol.pkl: BYOL entry 'res_net50/~/mystery:w'"):
        import_byol(tmp_path / "byol.pkl", log=lambda *_: None)


# --- reading objects without running them
FLAG = []


def _raise_flag(*args):
    FLAG.append(args)
    return 0


class _RunsAFunction:
    def __reduce__(self):
        return _raise_flag, ("ran",)


class _RunsACommand:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_objects_load_as_inert_stubs_and_no_code_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tensor = torch.arange(6.0).reshape(2, 3)
    torch.save({"model": {"w": tensor}, "args": _Config(lr=0.1), "hook": _RunsAFunction(),
                "cmd": _RunsACommand(), "opt": argparse.Namespace(arch="resnet50")},
               tmp_path / "objects.pth")
    obj = safe_unpickle.torch_load(tmp_path / "objects.pth")
    assert torch.equal(obj["model"]["w"], tensor)
    for key, name in (("args", "_Config"), ("hook", "_raise_flag"), ("cmd", "system"),
                      ("opt", "argparse.Namespace")):
        assert isinstance(obj[key], safe_unpickle.Stub) and obj[key].source.endswith(name)
    assert obj["args"].stub_state == {"lr": 0.1}  # kept as data, no class was imported
    assert obj["hook"].stub_args == ("ran",)
    assert FLAG == [] and not (tmp_path / "pwned").exists()
    assert "tests.benchmarks.test_import_authors._Config" in safe_unpickle.stubs_in(obj)


def test_pixpro_detectron2_pkl_is_read_too(tmp_path):
    ck = scratch_checkpoint("resnet18", seed=1)
    export_detectron2(ck, tmp_path / "pixpro_d2.pkl", log=lambda *_: None)
    back = import_pixpro(tmp_path / "pixpro_d2.pkl", log=lambda *_: None)
    assert back["meta"]["method"] == "imported:pixpro"
    assert all(torch.equal(back["state_dict"][k], v) for k, v in ck["state_dict"].items())
    with pytest.raises(CheckpointError, match="online encoder only"):
        import_pixpro(tmp_path / "pixpro_d2.pkl", weights="target", log=lambda *_: None)


def test_bench_checkpoint_import_of_a_poodle_teacher(authors_file, weights, tmp_path, capsys):
    assert set(IMPORTERS) == set(IMPORT_SOURCES)
    out = tmp_path / "poodle_teacher.pth"
    assert main(["checkpoint", "import", "--from", "poodle", "--weights", "target",
                 str(authors_file("poodle")), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "teacher_backbone.layer4.2.bn3.running_var" in printed and "dropping " in printed
    ck = read_checkpoint(out)
    assert ck["meta"]["method"] == "imported:poodle" and ck["decoder"]["order"] == "authors"
    assert torch.equal(ck["state_dict"]["conv1.weight"], weights["target"]["conv1.weight"])
    assert main(["checkpoint", "info", str(out)]) == 0
    assert "imported:poodle" in capsys.readouterr().out
    assert main(["checkpoint", "import", "--from", "mmseg", "--weights", "target",
                 str(out), str(tmp_path / "x.pth")]) == 2
    assert "--weights is for poodle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["checkpoint", "import", "--from", "simclr", str(out), str(tmp_path / "y.pth")])
    assert "moco_v2" in capsys.readouterr().err
