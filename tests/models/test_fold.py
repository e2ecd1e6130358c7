"""The inference copy: BatchNorm folded into the decoder's convs, the caller's model untouched."""

import copy

import pytest
import torch
from torch import nn

from xchm.models.fold import fold_batchnorm, for_inference
from xchm.testing import fitted_model, responsive_model


def _batchnorms(module):
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


@pytest.fixture(scope="module")
def models():
    # Both have calibrated BatchNorm statistics (not 0/1), so a fold that ignored the
    # running mean/var, the affine terms or the transposed conv's layout would show.
    return {"fitted": fitted_model(steps=20), "responsive": responsive_model(multilevel=True)}


@pytest.mark.parametrize("name", ["fitted", "responsive"])
def test_for_inference__heights_equal_unfolded_within_1e4_m(models, name):
    model = models[name].eval()
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    view = for_inference(model)
    assert _batchnorms(model.decoder) > 0 and _batchnorms(view.decoder) == 0
    with torch.inference_mode():
        expected, got = model(x), view(x)
    assert float(expected.std()) > 0.1  # the heights vary: a wrong fold cannot hide
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_fold_batchnorm__uses_the_running_statistics():
    """A fold that kept the conv alone (BatchNorm dropped) would differ by far."""
    torch.manual_seed(0)
    seq = nn.Sequential(nn.ConvTranspose2d(4, 6, 4, 2, 1, bias=False), nn.BatchNorm2d(6))
    seq[1].running_mean.uniform_(-2, 2)
    seq[1].running_var.uniform_(0.5, 3)
    seq[1].weight.data.uniform_(0.5, 2)
    seq[1].bias.data.uniform_(-1, 1)
    seq.eval()
    x = torch.randn(2, 4, 5, 5)
    folded = copy.deepcopy(seq)
    assert fold_batchnorm(folded) == 1
    assert isinstance(folded[1], nn.Identity)
    with torch.inference_mode():
        expected = seq(x)
        torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)
        assert float((seq[0](x) - expected).abs().max()) > 0.5


def test_for_inference__leaves_the_callers_model_as_it_was(models):
    model = models["responsive"].train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    view = for_inference(model)
    assert model.training and not view.training
    assert view.backbone is model.backbone  # shared, not a second copy
    assert view.decoder is not model.decoder
    assert _batchnorms(model.decoder) > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.eval()
