"""lossmix.modeling.layers: the one-pass FrozenBatchNorm2d against torchvision's, alone and inside a detector."""
import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d as TorchvisionFrozenBN

from lossmix.modeling.build import make_detector
from lossmix.modeling.layers import FrozenBatchNorm2d


def _randomise(bn, gen):
    c = bn.weight.numel()
    bn.weight.copy_(0.5 + torch.rand(c, generator=gen))
    bn.bias.copy_(torch.randn(c, generator=gen))
    bn.running_mean.copy_(torch.randn(c, generator=gen))
    bn.running_var.copy_(0.5 + torch.rand(c, generator=gen))


def test_same_state_dict_keys_and_loads_torchvision_weights():
    gen = torch.Generator().manual_seed(0)
    theirs = TorchvisionFrozenBN(8)
    _randomise(theirs, gen)
    ours = FrozenBatchNorm2d(8)
    ours.load_state_dict({**theirs.state_dict(), "num_batches_tracked": torch.tensor(3)})  # a BatchNorm2d's extra key
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.state_dict().items())


@pytest.mark.parametrize("requires_grad", [False, True])
def test_output_and_input_gradient_match_torchvision(requires_grad):
    gen = torch.Generator().manual_seed(1)
    theirs, ours = TorchvisionFrozenBN(16), FrozenBatchNorm2d(16)
    _randomise(theirs, gen)
    ours.load_state_dict(theirs.state_dict())
    x = (3 * torch.randn(2, 16, 7, 9, generator=gen)).requires_grad_(requires_grad)
    out_theirs, out_ours = theirs(x), ours(x)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-6, atol=1e-5)
    assert not torch.equal(out_ours, torch.zeros_like(out_ours))
    if requires_grad:
        grad = torch.randn(out_ours.shape, generator=gen)
        (g_theirs,), (g_ours,) = torch.autograd.grad(out_theirs, x, grad), torch.autograd.grad(out_ours, x, grad)
        assert torch.equal(g_ours, g_theirs)  # the same grad * scale
        assert all(b.grad is None for b in ours.buffers())


def _detector_pair(backbone):
    """Our detector with FrozenBN (random statistics) and a copy using torchvision's FrozenBatchNorm2d."""
    torch.manual_seed(0)
    ours = make_detector(backbone=backbone, norm="FrozenBN", trainable_layers=3, returned_layers=(2, 3, 4),
                         fpn_channels=32, num_classes=3, box_head_dim=64, anchor_sizes=((16,), (32,), (64,), (128,)),
                         rpn={"batch_size_per_image": 64, "post_nms_top_n_train": 100, "post_nms_top_n_test": 50},
                         roi_heads={"batch_size_per_image": 32, "score_thresh": 0.0, "detections_per_img": 20})
    gen = torch.Generator().manual_seed(2)
    frozen = [m for m in ours.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen
    with torch.no_grad():
        for bn in frozen:
            _randomise(bn, gen)
    torch.manual_seed(0)
    theirs = make_detector(backbone=backbone, norm="FrozenBN", trainable_layers=3, returned_layers=(2, 3, 4),
                           fpn_channels=32, num_classes=3, box_head_dim=64, anchor_sizes=((16,), (32,), (64,), (128,)),
                           rpn={"batch_size_per_image": 64, "post_nms_top_n_train": 100, "post_nms_top_n_test": 50},
                           roi_heads={"batch_size_per_image": 32, "score_thresh": 0.0, "detections_per_img": 20})
    for m in theirs.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.__class__ = TorchvisionFrozenBN
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("backbone", ["R18-FPN", "R50-FPN"])
def test_detector_losses_gradients_and_detections_match_torchvision(backbone):
    ours, theirs = _detector_pair(backbone)
    gen = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 96, 128, generator=gen), torch.rand(3, 128, 96, generator=gen)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]]),
                "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[5.0, 30.0, 80.0, 110.0]]), "labels": torch.tensor([2])}]
    losses = {}
    for name, model in (("ours", ours), ("theirs", theirs)):
        model.train()
        torch.manual_seed(4)  # the same anchor / proposal samples
        out = model(images, targets)
        sum(out.values()).backward()
        losses[name] = out
    assert set(losses["ours"]) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    for key, value in losses["theirs"].items():
        torch.testing.assert_close(losses["ours"][key], value, rtol=1e-4, atol=1e-6)
    grads = {n: p.grad for n, p in theirs.named_parameters() if p.grad is not None}
    ours_grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    assert set(ours_grads) == set(grads) and any(n.startswith("backbone.body.layer2.") for n in grads)
    worst = max(float((ours_grads[n] - g).norm() / g.norm().clamp_min(1e-12)) for n, g in grads.items())
    assert worst < 1e-4, worst  # relative to each gradient's norm: float rounding through the network
    with torch.no_grad():
        det_ours, det_theirs = ours.eval()(images), theirs.eval()(images)
    for a, b in zip(det_ours, det_theirs):
        assert len(b["boxes"]) > 0
        # 53 layers of random statistics amplify rounding: agreement to ~1e-3 (a wrong formula is off by far more)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-3, atol=1e-2)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-2, atol=1e-3)
        assert torch.equal(a["labels"], b["labels"])
