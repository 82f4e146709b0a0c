"""The two training protocols (guiding_nc.training.protocol): the code release's ``paper`` protocol, head
by head against its formulas, and each difference from ``one_switch`` as a setting of its own."""
import warnings

import pytest
import torch

from guiding_nc.training.config import ConfigError, TrainConfig, load_config
from guiding_nc.core.heads import normalize_features
from guiding_nc.core.methods import build_head
from guiding_nc.training.protocol import OPTION_KEYS, OPTIONS, describe, protocol_values

TAU = 5.0


def _batch(B=24, d=12, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(B) % C
    return torch.randn(B, d, generator=g, dtype=torch.float64), y


def _paper_head(method, d=12, C=4, **kw):
    cfg = load_config({"method": method, "protocol": "paper"})
    opts = cfg.head_options()
    opts.update(solve_dtype=torch.float64, **kw)
    return build_head(method, d, C, **opts).double().train()


def test_the_protocols_are_the_code_release_and_todays_choices():
    assert protocol_values("paper") == {
        "standard_centring": "none", "fixed_centring": "batch_detached", "implicit_centring": "batch",
        "standard_sampler": "shuffled", "fixed_sampler": "shuffled", "implicit_sampler": "stratified",
        "implicit_class_means": "normalised_average", "final_activation": True, "agd_depth": "trainable"}
    assert protocol_values("one_switch") == {
        "standard_centring": "running", "fixed_centring": "running", "implicit_centring": "running",
        "standard_sampler": "stratified", "fixed_sampler": "stratified", "implicit_sampler": "stratified",
        "implicit_class_means": "normalised_batches", "final_activation": False, "agd_depth": "trainable"}
    for o in OPTIONS:  # every option documents the code release's choice
        assert "code release" in o.doc, o.key


def test_paper_standard_head_is_tau_w_h_without_bias():
    x, y = _batch()
    head = _paper_head("standard")
    W = head.linear.weight.detach()
    assert head.linear.bias is None and head.centring is None
    z = head(x, y)
    assert torch.allclose(z, TAU * normalize_features(x) @ W.T, atol=1e-12)
    assert head.bias is None
    head.eval()
    assert torch.allclose(head(x), TAU * normalize_features(x) @ W.T, atol=1e-12)


def test_paper_fixed_head_bias_is_the_batch_mean_without_gradient():
    x, y = _batch(seed=1)
    head = _paper_head("fixed")
    W = head.W
    xr = x.clone().requires_grad_(True)
    z = head(xr, y)
    h = normalize_features(xr)
    mean = h.mean(0).detach()
    expected = TAU * (h @ W.T - W @ mean)
    assert torch.allclose(z, expected, atol=1e-12)
    assert torch.allclose(head.bias, -(W @ mean), atol=1e-12)  # b = -W mean(batch)
    # Gradient: as if the mean were a constant (no path through it).
    probe = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=z.dtype)
    (g,) = torch.autograd.grad((z * probe).sum(), xr, retain_graph=True)
    (g_ref,) = torch.autograd.grad((expected * probe).sum(), xr)
    assert torch.allclose(g, g_ref, atol=1e-12)
    h_with = normalize_features(xr)
    (g_with,) = torch.autograd.grad((TAU * (h_with - h_with.mean(0)) @ W.T * probe).sum(), xr)
    assert not torch.allclose(g, g_with, atol=1e-6)  # the mean's gradient really is absent
    # Evaluation: the evaluated batch's own mean, as the code release resets it every forward.
    head.eval()
    x2, _ = _batch(B=10, seed=2)
    h2 = normalize_features(x2)
    assert torch.allclose(head(x2), TAU * (h2 - h2.mean(0)) @ W.T, atol=1e-12)
    assert torch.allclose(head.logits_from(h2), TAU * (h2 - h2.mean(0)) @ W.T, atol=1e-12)


def test_paper_implicit_head_bias_is_the_batch_mean_with_gradient():
    x, y = _batch(seed=4)
    head = _paper_head("implicit", ddn_backward="none")  # W constant in x: the bias path alone
    xr = x.clone().requires_grad_(True)
    z = head(xr, y)
    W = head.W.clone()
    h = normalize_features(xr)
    mu_g = h.mean(0)
    expected = TAU * (h @ W.T - W @ mu_g)
    assert torch.allclose(z, expected, atol=1e-10)
    assert torch.allclose(head.bias, -(W @ mu_g.detach()), atol=1e-10)
    probe = torch.randn(z.shape, generator=torch.Generator().manual_seed(5), dtype=z.dtype)
    (g,) = torch.autograd.grad((z * probe).sum(), xr, retain_graph=True)
    (g_ref,) = torch.autograd.grad((expected * probe).sum(), xr, retain_graph=True)
    assert torch.allclose(g, g_ref, atol=1e-10)
    (g_without,) = torch.autograd.grad((TAU * (h @ W.T - W @ mu_g.detach()) * probe).sum(), xr)
    assert not torch.allclose(g, g_without, atol=1e-6)  # the gradient through mu_G is there
    # A second batch: mu_G is that batch's mean, not an average over steps.
    x2, y2 = _batch(seed=6)
    z2 = head(x2, y2)
    h2 = normalize_features(x2)
    assert torch.allclose(z2, TAU * (h2 - h2.mean(0)) @ head.W.T, atol=1e-10)
    # Evaluation: the last training batch's mean, whatever batch is evaluated.
    head.eval()
    x3, _ = _batch(B=8, seed=7)
    h3 = normalize_features(x3)
    assert torch.allclose(head(x3), TAU * (h3 - h2.mean(0)) @ head.W.T, atol=1e-10)


def test_paper_implicit_class_means_average_then_normalise():
    """The code release averages the centred batch means (Eq. 9's EMA) and scales the average to
    unit norm; h_G itself is not averaged."""
    d, C = 12, 4
    head = _paper_head("implicit", d, C, ddn_backward="none")
    running = None
    for t in range(1, 4):
        x, y = _batch(seed=10 + t)
        head(x, y)
        h = normalize_features(x)
        means = torch.stack([h[y == c].mean(0) for c in range(C)], 1) - h.mean(0)[:, None]
        a = 2.0 / (t + 1)
        running = means if running is None else a * means + (1 - a) * running
        assert torch.allclose(head.ema.matrix, running / running.norm(), atol=1e-10), t
    # The one-switch rule differs: unit-norm batch matrices averaged.
    one = build_head("implicit", d, C, solve_dtype=torch.float64, ddn_backward="none").double().train()
    for t in range(1, 4):
        x, y = _batch(seed=10 + t)
        one(x, y)
    assert not torch.allclose(one.ema.matrix, head.ema.matrix, atol=1e-6)


def test_one_switch_heads_still_differ_in_w_only():
    """The one-switch identity (every head centred by the running h_G) survives the options."""
    cfgs = {m: load_config({"method": m}) for m in ("standard", "fixed", "implicit")}
    assert {cfgs[m].head_options()["centring"] for m in cfgs} == {"running"}
    d, C = 12, 4
    imp = build_head("implicit", d, C, **cfgs["implicit"].head_options()).train()
    fix = build_head("fixed", d, C, **cfgs["fixed"].head_options()).train()
    x, y = _batch(seed=8)
    x = x.float()
    z = imp(x, y)
    with torch.no_grad():
        fix.W.copy_(imp.weight)
    assert torch.allclose(fix(x, y), z, atol=1e-5)


def test_each_option_switches_alone_and_is_validated():
    base = load_config({"protocol": "paper", "method": "standard"})
    one = load_config({"protocol": "paper", "method": "standard", "standard_sampler": "stratified"})
    assert not base.stratified_batches and one.stratified_batches
    assert one.protocol_label() == "paper with standard_sampler=stratified"
    assert base.protocol_label() == "paper"
    # An option of another method leaves this run's label alone.
    assert load_config({"protocol": "paper", "method": "standard", "fixed_sampler": "stratified"}
                       ).protocol_label() == "paper"
    assert load_config({"protocol": "paper", "method": "implicit"}).stratified_batches
    for key in OPTION_KEYS:
        with pytest.raises(ConfigError, match=key):
            load_config({key: "nonsense"}).validate()
    with pytest.raises(ConfigError, match="protocol"):
        load_config({"protocol": "papers"}).validate()
    with pytest.raises(ConfigError, match="per method"):
        load_config({"stratified": False})
    with pytest.raises(ConfigError, match="not model_kwargs.final_activation"):
        load_config({"model": "mlp", "dataset": "digits", "model_kwargs": {"final_activation": True}}).validate()
    assert describe("one_switch", protocol_values("paper")).startswith("one_switch with ")


def _trainer(tmp_path, **kw):
    from guiding_nc.training.trainer import Trainer

    d = dict(name="p", output_dir=str(tmp_path), dataset="digits", model="mlp", feature_dim=16,
             model_kwargs={"hidden": [16]}, batch_size=32, epochs=1, max_train_samples=96, max_test_samples=40,
             eval_every=1, checkpoint_every=0, progress=False, verbose=False, report_epochs=[1])
    d.update(kw)
    t = Trainer(TrainConfig.from_dict(d))
    return t


def test_trainer_reads_sampler_activation_and_depth_from_the_protocol(tmp_path):
    from guiding_nc.training.samplers import RandomBatchSampler, StratifiedBatchSampler

    for method, sampler in (("standard", RandomBatchSampler), ("fixed", RandomBatchSampler),
                            ("implicit", StratifiedBatchSampler)):
        t = _trainer(tmp_path, method=method, protocol="paper", run_dir=str(tmp_path / f"paper-{method}"))
        assert isinstance(t.train_loader.batch_sampler, sampler), method
        assert isinstance(t.network.backbone.net[-1], torch.nn.ReLU), method  # features after a ReLU
        t1 = _trainer(tmp_path, method=method, run_dir=str(tmp_path / f"one-{method}"))
        assert isinstance(t1.train_loader.batch_sampler, StratifiedBatchSampler), method
        assert not isinstance(t1.network.backbone.net[-1], torch.nn.ReLU), method
    # AGD's depth: the trained tensors; under "layers" a fixed classifier counts as one more.
    std = _trainer(tmp_path, method="standard", run_dir=str(tmp_path / "d-std"))
    fix = _trainer(tmp_path, method="fixed", run_dir=str(tmp_path / "d-fix"))
    assert std.optimizer.depth == fix.optimizer.depth + 1
    fix_l = _trainer(tmp_path, method="fixed", agd_depth="layers", run_dir=str(tmp_path / "d-fixl"))
    std_l = _trainer(tmp_path, method="standard", agd_depth="layers", run_dir=str(tmp_path / "d-stdl"))
    assert fix_l.optimizer.depth == std.optimizer.depth == std_l.optimizer.depth


def test_settings_hash_names_what_the_run_computes():
    from guiding_nc.experiments.store import effective_settings

    one = effective_settings(load_config("digits_mlp", {"method": "fixed"}))
    paper = effective_settings(load_config("digits_mlp", {"method": "fixed", "protocol": "paper"}))
    assert one != paper
    assert one["stratified"] is True and one["model_kwargs"]["final_activation"] is False
    assert "protocol" not in one and "fixed_centring" not in one  # the one-switch values: as before
    assert paper["stratified"] is False and paper["fixed_centring"] == "batch_detached"
    assert "final_activation" not in paper["model_kwargs"]  # the model's default, True
    # An option that does not touch the run leaves its settings alone.
    assert effective_settings(load_config("digits_mlp", {"method": "fixed", "standard_centring": "none"})) == one
    # The paper protocol with every option set back to one_switch is the one-switch run.
    back = {k: v for k, v in protocol_values("one_switch").items()}
    assert effective_settings(load_config("digits_mlp", {"method": "fixed", "protocol": "paper", **back})) == one


def test_weight_decay_unset_outside_agd_is_warned(tmp_path):
    with pytest.warns(UserWarning, match="weight_decay"):
        _trainer(tmp_path, method="standard", optimizer="sgd", lr=0.1, run_dir=str(tmp_path / "wd1"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _trainer(tmp_path, method="standard", optimizer="sgd", lr=0.1, weight_decay=5e-4,
                 run_dir=str(tmp_path / "wd2"))
        _trainer(tmp_path, method="standard", run_dir=str(tmp_path / "wd3"))  # AGD: no weight decay


def test_every_experiment_states_its_weight_decay():
    from guiding_nc.experiments.spec import list_experiments, load_experiment

    for name in list_experiments():
        spec = load_experiment(name)
        for job in spec.jobs():
            cfg = load_config(job["config"], job["overrides"])
            assert "weight_decay" in cfg.explicit_keys, (name, job["config"], job["variant"])
