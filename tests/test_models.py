"""Tests for guiding_nc.training.models: shapes, feature_dim, AGD compatibility, input validation."""
import pytest
import torch
from torch import nn

from guiding_nc.training.models import MODEL_NAMES, build_model
from guiding_nc.training.models.mlp import MLP
from guiding_nc.training.models.resnet import ResNet18
from guiding_nc.training.models.small_cnn import SmallCNN
from guiding_nc.training.models.ufm import UFM
from guiding_nc.training.models.vgg import VGG13

# (name, build kwargs, per-sample input shape, expected feature_dim)
CASES = [
    ("mlp", dict(input_shape=(40,)), (40,), 128),                          # MNIST-1D vectors
    ("mlp", dict(input_shape=(1, 28, 28), hidden=(64,), feature_dim=32), (1, 28, 28), 32),
    ("mlp", dict(input_shape=(1, 8, 8)), (1, 8, 8), 128),
    ("mlp", dict(input_shape=(3, 32, 32), hidden=()), (3, 32, 32), 128),
    ("small_cnn", dict(input_shape=(1, 28, 28)), (1, 28, 28), 128),
    ("small_cnn", dict(input_shape=(1, 8, 8), feature_dim=16), (1, 8, 8), 16),
    ("small_cnn", dict(input_shape=(3, 32, 32)), (3, 32, 32), 128),
    ("small_cnn", dict(input_shape=(1, 4, 4)), (1, 4, 4), 128),
    ("resnet18", dict(), (3, 32, 32), 512),
    ("resnet18", dict(in_channels=1, feature_dim=64), (1, 8, 8), 64),
    ("resnet50", dict(input_shape=(3, 32, 32)), (3, 32, 32), 2048),
    ("vgg13", dict(), (3, 32, 32), 512),
    ("vgg13", dict(in_channels=1, feature_dim=100), (1, 32, 32), 100),
]


def _ids(case):
    return f"{case[0]}-{'x'.join(map(str, case[2]))}-{case[3]}"


@pytest.fixture(scope="module")
def built():
    """Build every case once in both modes (ResNet-50 is the slow one)."""
    torch.manual_seed(0)
    return {
        (i, agd): build_model(name, agd_compatible=agd, **kw)
        for i, (name, kw, _, _) in enumerate(CASES)
        for agd in (False, True)
    }


@pytest.mark.parametrize("agd", [False, True])
@pytest.mark.parametrize("i", range(len(CASES)), ids=[_ids(c) for c in CASES])
def test_output_shape_and_feature_dim(built, i, agd):
    name, _, shape, dim = CASES[i]
    model = built[(i, agd)]
    assert isinstance(model.feature_dim, int) and model.feature_dim == dim
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, dim)
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, dim)
    model.train()


@pytest.mark.parametrize("i", range(len(CASES)), ids=[_ids(c) for c in CASES])
def test_agd_compatible_models_have_only_matrix_parameters(built, i):
    agd_model, plain = built[(i, True)], built[(i, False)]
    assert all(p.dim() >= 2 for p in agd_model.parameters())
    assert any(p.dim() < 2 for p in plain.parameters())  # the switch really changes something
    for m in agd_model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert not m.affine and m.track_running_stats
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            assert m.bias is None


def test_models_have_no_classifier_and_are_class_independent():
    a = build_model("resnet18", num_classes=10)
    b = build_model("resnet18", num_classes=100)
    assert isinstance(a.fc, nn.Identity)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    assert a.conv1.kernel_size == (3, 3) and a.conv1.stride == (1, 1)
    assert isinstance(a.maxpool, nn.Identity)
    assert not any(isinstance(m, nn.Linear) for m in build_model("vgg13").modules())


def test_features_backpropagate():
    model = SmallCNN(1, 8, 8)
    x = torch.randn(4, 1, 8, 8)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ------------------------------------------------------------------------------------------ UFM
def test_ufm_rows_shape_and_init():
    gen = torch.Generator().manual_seed(0)
    ufm = build_model("ufm", num_samples=1000, feature_dim=64, generator=gen)
    assert isinstance(ufm, UFM) and ufm.feature_dim == 64
    assert isinstance(ufm.features, nn.Parameter) and ufm.features.shape == (1000, 64)
    idx = torch.tensor([0, 5, 999, 5])
    out = ufm(idx)
    assert out.shape == (4, 64)
    assert torch.equal(out, ufm.features[idx])
    # default init_std = 1/sqrt(d): feature vectors have squared norm ~ 1
    assert ufm.features.detach().square().sum(1).mean().item() == pytest.approx(1.0, abs=0.05)
    out.sum().backward()
    assert ufm.features.grad[5].eq(2).all() and ufm.features.grad[1].eq(0).all()
    again = UFM(1000, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.features, ufm.features)
    assert ufm(torch.empty(0, dtype=torch.long)).shape == (0, 64)
    assert UFM(3, 2, init_std=0.0).features.abs().sum() == 0


def test_ufm_index_validation():
    ufm = UFM(10, 4)
    with pytest.raises(ValueError, match=r"\[0, 10\).*\[3, 10\]"):
        ufm(torch.tensor([3, 10]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        ufm(torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer"):
        ufm(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="integer"):
        ufm(torch.tensor([True]))
    with pytest.raises(TypeError, match="LongTensor"):
        ufm([1, 2])
    with pytest.raises(ValueError, match="1-D"):
        ufm(torch.tensor([[1, 2]]))
    assert ufm(torch.tensor([1, 2], dtype=torch.int32)).shape == (2, 4)
    with pytest.raises(ValueError, match="num_samples"):
        UFM(0, 4)
    with pytest.raises(TypeError, match="feature_dim"):
        UFM(4, 2.5)
    with pytest.raises(ValueError, match="init_std"):
        UFM(4, 2, init_std=-1.0)


# ----------------------------------------------------------------------------- input validation
def test_forward_input_validation():
    with pytest.raises(ValueError, match="3 channels"):
        build_model("resnet18", in_channels=1)(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        VGG13()(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="H, W >= 32"):
        VGG13(1)(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="input_size"):
        SmallCNN(1, 8, 28)(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="in_features=40"):
        MLP(40)(torch.randn(2, 41))
    with pytest.raises(TypeError, match="Tensor"):
        ResNet18()([1, 2, 3])


def test_constructor_validation():
    with pytest.raises(ValueError, match="activation"):
        MLP(4, activation="swish2")
    with pytest.raises(ValueError, match="bias=True conflicts"):
        MLP(4, bias=True, agd_compatible=True)
    assert not any(p.dim() < 2 for p in MLP(4, bias=False).parameters())
    assert sum(p.dim() == 1 for p in MLP(4, hidden=(3,)).parameters()) == 2
    with pytest.raises(TypeError, match="hidden"):
        MLP(4, hidden=8)
    with pytest.raises(TypeError, match="in_channels"):
        SmallCNN("1", 8, 8)
    with pytest.raises(TypeError, match="input_size"):
        SmallCNN(1, 8, (8, 8, 8))
    with pytest.raises(TypeError, match="agd_compatible"):
        VGG13(agd_compatible="yes")


def test_build_model_validation():
    assert MODEL_NAMES == ("ufm", "mlp", "small_cnn", "resnet18", "resnet50", "vgg13")
    with pytest.raises(ValueError, match="ufm, mlp, small_cnn, resnet18, resnet50, vgg13"):
        build_model("resnet34")
    with pytest.raises(TypeError, match="str"):
        build_model(18)
    with pytest.raises(ValueError, match="num_samples and feature_dim"):
        build_model("ufm", feature_dim=8)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("mlp")
    with pytest.raises(ValueError, match="input_shape"):
        build_model("small_cnn", in_channels=1)
    with pytest.raises(ValueError, match="conflicts"):
        build_model("small_cnn", in_channels=3, input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="vgg13.*32"):
        build_model("vgg13", input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("resnet18", input_shape=(40,))
    with pytest.raises(ValueError, match="num_samples"):
        build_model("mlp", input_shape=(40,), num_samples=5)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", input_shape=(40,), num_classes=0)
    with pytest.raises(TypeError):
        build_model("mlp", input_shape=(40,), not_an_option=1)
    assert build_model("MLP", in_features=40).in_features == 40
    assert build_model("small_cnn", input_shape=(1, 8, 8)).in_channels == 1


@pytest.mark.parametrize("name,shape", [("mlp", (64,)), ("small_cnn", (1, 8, 8))])
def test_feature_batch_norm_keeps_every_unit_alive(name, shape):
    """With the feature layer batch-normalised before its ReLU, every unit fires on part of a batch."""
    torch.manual_seed(0)
    m = build_model(name, input_shape=shape, feature_dim=16, agd_compatible=True, feature_batch_norm=True).train()
    f = m(torch.randn(64, *shape))
    assert f.shape == (64, 16) and bool((f >= 0).all())
    frac = (f > 0).float().mean(0)
    assert bool((frac > 0.2).all()) and bool((frac < 0.8).all())
    assert all(p.dim() >= 2 for p in m.parameters())  # still AGD-compatible
    with pytest.raises(TypeError, match="feature_batch_norm"):
        build_model(name, input_shape=shape, feature_dim=16, feature_batch_norm="yes")


def test_mean_free_ufm_start_has_class_means_without_their_samples():
    from guiding_nc.training.loaders import balanced_labels

    N, C, d = 400, 10, 64
    y = balanced_labels(N, C)
    u = UFM(N, d, init="mean_free", labels=y, init_offset=1e-3, generator=torch.Generator().manual_seed(0))
    H = u.features.detach()
    for c in range(C):
        rows = H[y == c]
        half = rows.shape[0] // 2
        # antipodal pairs around the class offset: the class mean is the offset exactly
        assert torch.allclose(rows[:half] + rows[half:], 2 * rows.mean(0).expand(half, d), atol=1e-6)
        assert float(rows.mean(0).norm()) < 3e-3
    # A nearest-class-mean classifier of the normalised features is at chance (here: at most 2x chance),
    # where the paper's Gaussian start gives it most samples.
    def ncm(features):
        h = features / features.norm(dim=1, keepdim=True)
        means = torch.zeros(C, d).index_add(0, y, h) / (N // C)
        return float(((h @ means.T - 0.5 * (means * means).sum(1)).argmax(1) == y).float().mean())

    assert ncm(H) <= 2.0 / C
    assert ncm(UFM(N, d, generator=torch.Generator().manual_seed(0)).features.detach()) > 3.0 / C
    with pytest.raises(ValueError, match="labels"):
        UFM(N, d, init="mean_free")
    with pytest.raises(ValueError, match="odd number"):
        UFM(3, d, init="mean_free", labels=torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="unknown UFM init"):
        UFM(N, d, init="zeros")
