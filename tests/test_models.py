import pytest
import torch

from bench.compression import inference_param_count
from bench.models import build_model
from bench.registry import MODELS, RegistryError

SHAPES = {"digits_cnn": (1, 8), "lenet5": (1, 28), "vgg16": (3, 32), "wrn16_4": (3, 32)}


@pytest.mark.parametrize("arch", MODELS.names())
def test_forward_shape_and_inputs_in_unit_range(arch):
    c, s = SHAPES[arch]
    m = build_model(arch, num_classes=7, in_channels=c, image_size=s).eval()
    with torch.no_grad():
        out = m(torch.rand(2, c, s, s))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_lenet5_is_the_papers():
    m = build_model("lenet5")
    # conv20(5x5) 520 + conv50(5x5) 25,050 + fc 800->500 400,500 + fc 500->10 5,010
    assert inference_param_count(m) == 431_080


def test_vgg16_has_13_convs_and_fc_512_512():
    m = build_model("vgg16")
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    fcs = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert len(convs) == 13 and all(any(isinstance(b, torch.nn.BatchNorm2d) for b in m.modules()) for _ in [0])
    assert [(f.in_features, f.out_features) for f in fcs] == [(512, 512), (512, 512), (512, 10)]


def test_vgg16_matches_the_papers_architecture_and_init():
    """Conv3x3 without bias + BatchNorm(momentum 0.9) + LeakyReLU(0.01) blocks, max-pools, then
    Linear 512->512, LeakyReLU, Linear 512->512, LeakyReLU, Dropout(0.2), Linear 512->10."""
    from torch import nn

    torch.manual_seed(0)
    m = build_model("vgg16")
    kinds = [type(x).__name__ for x in m]
    body = kinds[1:kinds.index("Flatten")]
    convs = [x for x in m if isinstance(x, nn.Conv2d)]
    assert body.count("Conv2d") == 13 and body.count("MaxPool2d") == 5
    for i, k in enumerate(body):
        if k == "Conv2d":
            assert body[i + 1:i + 3] == ["BatchNorm2d", "LeakyReLU"]
    assert all(c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert all(b.momentum == 0.9 for b in m if isinstance(b, nn.BatchNorm2d))
    assert all(a.negative_slope == 0.01 for a in m.modules() if isinstance(a, nn.LeakyReLU))
    assert not any(isinstance(a, nn.ReLU) for a in m.modules())
    assert kinds[kinds.index("Flatten"):] == ["Flatten", "Linear", "LeakyReLU", "Linear", "LeakyReLU", "Dropout",
                                              "Linear"]
    assert [x.p for x in m if isinstance(x, nn.Dropout)] == [0.2]
    # Kaiming-normal (fan-in, ReLU gain): std = sqrt(2 / fan_in); biases uniform on [0, 1)
    w = convs[5].weight
    assert abs(float(w.std()) - (2.0 / w[0].numel()) ** 0.5) < 0.05 * (2.0 / w[0].numel()) ** 0.5
    b = torch.cat([x.bias for x in m if isinstance(x, nn.Linear)])
    assert float(b.min()) >= 0.0 and float(b.max()) < 1.0 and 0.4 < float(b.mean()) < 0.6


def test_lenet5_uses_leaky_relu():
    from torch import nn

    m = build_model("lenet5")
    assert [type(x).__name__ for x in m][1:] == ["Conv2d", "LeakyReLU", "MaxPool2d", "Conv2d", "LeakyReLU",
                                                 "MaxPool2d", "Flatten", "Linear", "LeakyReLU", "Linear"]
    assert not any(isinstance(a, nn.ReLU) for a in m.modules())


def test_wrn_residual_connections_carry_the_input():
    m = build_model("wrn16_4").eval()
    block = m.blocks[1]  # identity shortcut (same width, stride 1)
    assert block.shortcut is None
    with torch.no_grad():
        for p in (block.conv2.weight,):
            p.zero_()  # the residual branch now adds nothing
        x = torch.randn(2, 64, 8, 8)
        assert torch.equal(block(x), x)
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    assert len(convs) == 1 + 6 * 2 + 3  # stem, 2 per block, 3 projection shortcuts


def test_unknown_model():
    with pytest.raises(RegistryError, match="Did you mean: lenet5"):
        build_model("lenet")
