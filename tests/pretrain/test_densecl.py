"""DenseCL's dense loss: correspondence by backbone features, negatives from the queue."""
import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.losses import dense_infonce_loss, infonce_loss


def test_each_query_cell_takes_the_key_cell_with_the_most_similar_backbone_feature():
    g = torch.Generator().manual_seed(0)
    N, D, C, S = 2, 8, 16, 9
    k_feat = F.normalize(torch.randn(N, C, S, generator=g), dim=1)
    perm = torch.stack([torch.randperm(S, generator=g) for _ in range(N)])  # [N, S]
    q_feat = torch.gather(k_feat, 2, perm[:, None].expand(N, C, S))  # cell i is key perm[i]
    k = F.normalize(torch.randn(N, D, S, generator=g), dim=1)
    q = F.normalize(torch.randn(N, D, S, generator=g), dim=1)
    queue = F.normalize(torch.randn(D, 32, generator=g), dim=0)
    got = dense_infonce_loss(q, k, q_feat, k_feat, queue, 0.2)
    positives = torch.gather(k, 2, perm[:, None].expand(N, D, S))
    expected = infonce_loss(q.transpose(1, 2).reshape(-1, D),
                            positives.transpose(1, 2).reshape(-1, D), queue, 0.2)
    assert torch.allclose(got, expected)
    unmatched = infonce_loss(q.transpose(1, 2).reshape(-1, D), k.transpose(1, 2).reshape(-1, D),
                             queue, 0.2)
    assert not torch.allclose(got, unmatched)  # the cell order alone would be wrong


def test_the_dense_loss_is_log_k_plus_1_when_all_are_equal_and_0_when_the_positive_wins():
    D, S, K = 4, 4, 15
    v = F.normalize(torch.ones(1, D, S), dim=1)
    feat = F.normalize(torch.eye(S)[None], dim=1)  # cell i matches cell i
    same = v[0, :, :1].expand(D, K)  # every negative equals the positive
    assert math.isclose(dense_infonce_loss(v, v, feat, feat, same, 0.2).item(),
                        math.log(K + 1), rel_tol=1e-5)
    far = -same  # every negative opposite: cos -1 against +1, at tau 0.2
    assert dense_infonce_loss(v, v, feat, feat, far, 0.2).item() < 1e-3


def test_the_global_neck_starts_as_the_authors_and_the_key_head_equals_it():
    """WXinlong/DenseCL necks.py _init_weights(init_linear='kaiming'): the global MLP's
    linear layers kaiming normal (fan_in, ReLU: std sqrt(2 / fan_in)), bias 0."""
    from pretrain.config import load_preset
    from pretrain.methods import get_method_class
    torch.manual_seed(0)
    model = load_preset("densecl", "study_cpu")["model"]
    method = get_method_class("densecl")(**model)
    linears = [m for m in method.head.modules() if isinstance(m, torch.nn.Linear)]
    for m in linears:
        assert m.weight.std().item() == pytest.approx(math.sqrt(2 / m.in_features), rel=0.05)
        assert torch.count_nonzero(m.bias) == 0
    key = dict(method.key_head.named_parameters())
    assert all(torch.equal(p, key[k]) for k, p in method.head.named_parameters())
