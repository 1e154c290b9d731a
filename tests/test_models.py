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
