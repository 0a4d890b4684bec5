"""The SSD network: configs, shapes, prior-order layout, whole-network gradients, save/load.

PyTorch cross-checks are in tests/test_model_torch.py; torchvision conversion in tests/test_convert.py.
"""
import numpy as np
import pytest

from conftest import gpu
from minissd.boxes import build_prior_index, match_batch
from minissd.checkpoint import CheckpointError, save_checkpoint
from minissd.model import (
    MODEL_CONFIGS,
    SSD,
    build_model,
    describe,
    get_config,
    load_model,
    save_model,
    scale_width,
    source_sizes,
)
from minissd.model.configs import IMAGENET_STD, UNIT_STD, VGG_MEAN, input_normalisation
from minissd.priors import num_priors
from minissd.testing import directional_check


# -- configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,maps,priors", [
    ("ssd300", [38, 19, 10, 5, 3, 1], 8732),
    ("ssd512", [64, 32, 16, 8, 4, 2, 1], 24564),
    ("small", [16, 8, 4, 2, 1], 1524),
])
def test_configs_give_the_papers_maps_and_prior_counts(name, maps, priors):
    assert source_sizes(name) == maps
    assert num_priors(MODEL_CONFIGS[name]["priors"]) == priors


def test_small_model_cost_is_about_a_tenth_of_a_gmac():
    # Issue 7's design point: ~0.10 GMAC per image (with 5 scores per box, the shapes dataset).
    gmac = sum(r["macs"] for r in describe("small", num_classes=5)) / 1e9
    assert 0.095 <= gmac <= 0.11, gmac


def test_ssd300_parameter_count_and_receptive_fields():
    # 26.28 M parameters for VOC (21 scores), as in the authors' SSD300.
    model_rows = describe("ssd300", num_classes=21)
    assert sum(r["params"] for r in model_rows) == 26_285_486
    rf = {r["name"]: r["rf"] for r in model_rows}
    # conv4_3 sees 92 px; fc6's dilation 6 at stride 16 adds 2 * 6 * 16 = 192 px on top of conv5_3 + pool5.
    assert rf["conv4_3"] == 92
    assert rf["fc6"] - rf["pool5"] == 2 * 6 * 16


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c["sources"].append("pool1"), "source 'pool1'"),
    (lambda c: c["sources"].reverse(), "network order"),
    (lambda c: c["boxes_per_location"].pop(), "boxes_per_location"),
    (lambda c: c["l2norm"].update(conv2=20.0), "l2norm source 'conv2'"),
    (lambda c: c["extras"].append({"type": "conv", "name": "conv9", "out": 8, "kernel": 1, "stride": 1,
                                   "padding": 0, "dilation": 1}), "last layer"),
    (lambda c: c["init"].update(trunk="uniform"), "init"),
    (lambda c: c.pop("priors"), "missing 'priors'"),
])
def test_bad_configs_are_refused_with_the_reason(mutate, match):
    config = get_config("small")
    mutate(config)
    with pytest.raises(ValueError, match=match):
        get_config(config)


def test_config_whose_maps_do_not_fit_its_priors_is_refused(rng):
    config = get_config("small")
    config["image_size"] = 96
    with pytest.raises(ValueError, match="prior image_size 128 != network input 96"):
        SSD(config, 5, rng)
    config = get_config("small")
    from minissd.priors import PRIOR_CONFIGS
    config["priors"] = dict(PRIOR_CONFIGS["small"].to_dict(), feature_maps=[16, 8, 4, 2, 2])
    with pytest.raises(ValueError, match=r"source maps are \[16, 8, 4, 2, 1\]"):
        SSD(config, 5, rng)
    config = get_config("small")
    config["boxes_per_location"] = [4, 6, 6, 6, 4]
    with pytest.raises(ValueError, match="boxes_per_location"):
        SSD(config, 5, rng)


# -- shapes and layout -----------------------------------------------------------------------------
@pytest.mark.parametrize("name,width,m,batch", [("small", 1.0, 5, 2), ("ssd300", 0.125, 21, 1),
                                                ("ssd512", 0.125, 21, 1)])
def test_output_shapes_and_backward_shapes(name, width, m, batch, rng):
    # ssd300/ssd512 at an eighth of the width: the same maps, priors and output shapes, 64x cheaper
    # (full-width SSD300 runs in tests/test_model_torch.py).
    config = scale_width(name, width) if width != 1.0 else name
    model = build_model(config, m, rng)
    s = model.image_size
    x = rng.standard_normal((batch, 3, s, s)).astype(np.float32)
    loc, conf = model.forward(x)
    p = model.priors_cxcywh.shape[0]
    assert p == model.num_priors == {"small": 1524, "ssd300": 8732, "ssd512": 24564}[name]
    assert loc.shape == (batch, p, 4) and conf.shape == (batch, p, m)
    assert loc.dtype == conf.dtype == np.float32
    assert np.isfinite(loc).all() and np.isfinite(conf).all()
    dx = model.backward(np.ones_like(loc), np.ones_like(conf))
    assert dx.shape == x.shape and dx.dtype == np.float32


def test_full_width_ssd512_builds_with_the_caffe_parameter_count(rng):
    model = build_model("ssd512", 21, rng)
    assert model.num_parameters() == sum(r["params"] for r in describe("ssd512", num_classes=21))
    assert model.params == {} and list(model.children) == ["trunk", "extras", "l2norm", "loc", "conf"]
    assert model.loc.children["conv12_2"].params["W"].shape == (16, 256, 3, 3)


def test_head_outputs_land_on_their_priors(rng):
    # Output row p must be (location (i, j) of map k, box a) exactly where priors.py put prior p:
    # set every head to bias-only outputs that encode (a, c) and check the row's contents against
    # the prior's centre and shape.
    model = build_model("small", 3, rng)
    for head in (model.loc, model.conf):
        for mod in head.children.values():
            mod.params["W"][...] = 0
            f = mod.params["b"].shape[0]
            mod.params["b"][...] = np.arange(f)  # channel a * d + c (d = 4 for loc, 3 for conf)
    x = rng.standard_normal((1, 3, 128, 128)).astype(np.float32)
    loc, conf = model.forward(x)
    priors = model.priors_cxcywh
    cfg = model.config
    start = 0
    for size, a_count, step in zip(source_sizes(cfg), cfg["boxes_per_location"], (8, 16, 32, 64, 128), strict=True):
        block = slice(start, start + size * size * a_count)
        a = np.tile(np.arange(a_count), size * size)
        np.testing.assert_array_equal(loc[0, block], a[:, None] * 4 + np.arange(4))
        np.testing.assert_array_equal(conf[0, block], a[:, None] * 3 + np.arange(3))
        # And row r of the block is location (r // (size * A), (r // A) % size): the prior's centre.
        r = np.arange(size * size * a_count)
        i, j = r // (size * a_count), (r // a_count) % size
        np.testing.assert_allclose(priors[block, 0], (j + 0.5) * step / 128)
        np.testing.assert_allclose(priors[block, 1], (i + 0.5) * step / 128)
        start += size * size * a_count
    assert start == priors.shape[0]


def test_head_layout_matches_a_direct_head_convolution(rng):
    # The (N, A*4, H, W) -> (N, H*W*A, 4) placement, checked against the head conv run on its own.
    model = build_model("small", 4, rng)
    x = rng.standard_normal((2, 3, 128, 128)).astype(np.float32)
    loc, conf = model.forward(x)
    h = x
    for layer in model._segments[0] + model._segments[1]:
        h = layer.forward(h)
    y = model.conf.children["conv5_2"].forward(h)       # (2, 6 * 4, 8, 8)
    expected = y.transpose(0, 2, 3, 1).reshape(2, 8 * 8 * 6, 4)
    # close, not bitwise: the model runs loc and conf as one GEMM with their weights stacked, and some
    # OpenBLAS kernels (AMD EPYC's) round a row differently when the matrix has more rows
    np.testing.assert_allclose(conf[:, 16 * 16 * 4:16 * 16 * 4 + 8 * 8 * 6], expected, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_refused(rng):
    model = build_model("small", 5, rng)
    with pytest.raises(ValueError, match=r"\(N, 3, 128, 128\)"):
        model.forward(np.zeros((1, 3, 96, 96), np.float32))
    with pytest.raises(ValueError, match="dtype float64"):
        model.forward(np.zeros((1, 3, 128, 128), np.float64))
    with pytest.raises(ValueError, match="before forward"):
        build_model("small", 5, rng).backward(np.zeros((1, 1524, 4)), np.zeros((1, 1524, 5)))
    loc, conf = model.forward(np.zeros((1, 3, 128, 128), np.float32))
    with pytest.raises(ValueError, match="d_conf"):
        model.backward(loc, conf[:, :, :4])
    with pytest.raises(ValueError, match="num_classes"):
        build_model("small", 1, rng)
    with pytest.raises(ValueError, match="unknown"):
        build_model("ssd1000", 5, rng)


# -- whole-network gradients ------------------------------------------------------------------------
def _directional_per_array(model, x, rng, names=None, eps=1e-6, rtol=1e-5):
    """Check dL/dA along one direction for each array A (the input and the named parameters).

    L = sum(loc * r_loc) + sum(conf * r_conf) for fixed random r. The analytic gradients come from
    one backward; each numeric directional derivative costs two forwards. The direction is half the
    analytic gradient's direction and half a random one, so the derivative is large (no loss of
    signal in roundoff on big arrays) and a wrong gradient shows both ways: along its own direction
    and along the random part. Returns {name: (analytic, numeric)}.
    """
    loc, conf = model.forward(x)
    r_loc, r_conf = rng.standard_normal(loc.shape), rng.standard_normal(conf.shape)
    model.zero_grad()
    dx = model.backward(r_loc, r_conf)
    arrays = {"x": (x, dx)}
    arrays.update({n: (p, g.copy()) for n, p, g in model.named_parameters()})

    def loss():
        lo, co = model.forward(x)
        return float(np.sum(lo * r_loc) + np.sum(co * r_conf))

    results = {}
    for name in (names or list(arrays)):
        a, g = arrays[name]
        v = rng.standard_normal(a.shape)
        d = g / np.linalg.norm(g) + v / np.linalg.norm(v)
        d /= np.linalg.norm(d)
        analytic = float(np.sum(g * d))
        a += eps * d
        plus = loss()
        a -= 2 * eps * d
        minus = loss()
        a += eps * d
        numeric = (plus - minus) / (2 * eps)
        assert abs(analytic - numeric) <= rtol * max(abs(analytic), abs(numeric)), \
            f"{name}: analytic {analytic!r} vs numeric {numeric!r}"
        results[name] = (analytic, numeric)
    return results


def test_small_model_gradients_float64_every_parameter(rng):
    # The input and each of the 38 parameter arrays on its own, so an error in any single gradient
    # cannot hide behind the others. float64, central differences with eps 1e-6, rtol 1e-5.
    model = build_model("small", 5, rng, dtype=np.float64)
    x = rng.standard_normal((1, 3, 128, 128))
    results = _directional_per_array(model, x, rng)
    assert len(results) == 1 + 2 * 9 + 2 * 2 * 5
    assert min(abs(a) for a, _ in results.values()) > 0


def test_all_parameters_at_once_random_direction(rng):
    # The helper from minissd.testing: one random direction over the input and every parameter.
    model = build_model("small", 5, rng, dtype=np.float64)
    x = rng.standard_normal((1, 3, 128, 128))
    loc, conf = model.forward(x)
    r_loc, r_conf = rng.standard_normal(loc.shape), rng.standard_normal(conf.shape)

    def loss_and_grads():
        lo, co = model.forward(x)
        model.zero_grad()
        dx = model.backward(r_loc, r_conf)
        return float(np.sum(lo * r_loc) + np.sum(co * r_conf)), [dx] + [g for _, _, g in model.named_parameters()]

    directional_check(loss_and_grads, [x] + [p for _, p, _ in model.named_parameters()], rng, rtol=1e-5)


def test_ssd300_topology_gradients_float64(rng):
    # SSD300 cannot shrink its input (the unpadded conv10_2/conv11_2 need conv9_2 at 5x5, i.e. ~300 px),
    # so the float64 check runs at 300 px on an eighth of the width: every layer type of the real
    # network (ceil-mode pool3, pool5 3x3/s1, dilated fc6, L2Norm, stride-2 and unpadded extras), on
    # the arrays where SSD differs from a plain conv chain. tests/test_model_torch.py compares every
    # gradient of the same network with PyTorch.
    model = build_model(scale_width("ssd300", 0.125), 21, rng, dtype=np.float64)
    model.l2norm.children["conv4_3"].params["weight"][...] = rng.uniform(5, 30, 64)
    x = rng.standard_normal((1, 3, 300, 300))
    _directional_per_array(model, x, rng, names=[
        "x", "trunk.conv3_3.W", "trunk.conv4_3.W", "l2norm.conv4_3.weight", "trunk.fc6.W",
        "extras.conv10_2.W", "conf.conv4_3.W", "loc.conv11_2.b"])


def test_gradient_of_one_source_reaches_only_the_layers_below_it(rng):
    # With gradient only on the boxes of source 2 (conv5_2), the deeper layers and the other heads get
    # exactly zero gradient and the trunk below gets a non-zero one; with gradient on sources 1 and 2
    # together, the trunk's gradient is the sum of the two single-source gradients.
    model = build_model("small", 5, rng, dtype=np.float64)
    x = rng.standard_normal((1, 3, 128, 128))
    loc, conf = model.forward(x)
    offsets = model._offsets

    def grads_for(sources):
        d_loc, d_conf = np.zeros_like(loc), np.zeros_like(conf)
        for k in sources:
            d_loc[:, offsets[k]:offsets[k + 1]] = 1.0
            d_conf[:, offsets[k]:offsets[k + 1]] = -0.5
        model.forward(x)
        model.zero_grad()
        dx = model.backward(d_loc, d_conf)
        return dx, {n: g.copy() for n, _, g in model.named_parameters()}

    dx1, g1 = grads_for([1])
    for name, g in g1.items():
        deeper = name.startswith("extras.") or any(name.startswith(f"{h}.{s}.") for h in ("loc", "conf")
                                                   for s in ("conv4", "conv6", "conv7", "conv8"))
        if deeper:
            assert not g.any(), f"{name} got gradient from source 2"
        else:
            assert np.abs(g).max() > 0, f"{name} got no gradient"
    dx0, g0 = grads_for([0])
    dx01, g01 = grads_for([0, 1])
    np.testing.assert_allclose(dx01, dx0 + dx1, rtol=1e-10, atol=1e-12)
    for name in ("trunk.conv1.W", "trunk.conv4.b"):
        np.testing.assert_allclose(g01[name], g0[name] + g1[name], rtol=1e-10, atol=1e-12)


def test_backward_accumulates_until_zero_grad_and_leaves_its_inputs_alone(rng):
    model = build_model("small", 5, rng)
    x = rng.standard_normal((1, 3, 128, 128)).astype(np.float32)
    loc, conf = model.forward(x)
    d_loc = rng.standard_normal(loc.shape).astype(np.float32)
    d_conf = rng.standard_normal(conf.shape).astype(np.float32)
    saved = d_loc.copy(), d_conf.copy()
    model.zero_grad()
    model.backward(d_loc, d_conf)
    once = {n: g.copy() for n, _, g in model.named_parameters()}
    model.forward(x)
    model.backward(d_loc, d_conf)
    for n, _, g in model.named_parameters():
        np.testing.assert_allclose(g, 2 * once[n], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(d_loc, saved[0])
    np.testing.assert_array_equal(d_conf, saved[1])
    model.zero_grad()
    assert all(not g.any() for _, _, g in model.named_parameters())


def test_input_grad_off_skips_dx_and_changes_no_parameter_gradient(rng):
    model = build_model("small", 5, rng)
    x = rng.standard_normal((1, 3, 128, 128)).astype(np.float32)
    loc, conf = model.forward(x)
    d_loc, d_conf = np.ones_like(loc), np.ones_like(conf)
    model.zero_grad()
    assert model.backward(d_loc, d_conf) is not None
    with_dx = {n: g.copy() for n, _, g in model.named_parameters()}
    model.input_grad = False
    model.forward(x)
    model.zero_grad()
    assert model.backward(d_loc, d_conf) is None
    for n, _, g in model.named_parameters():
        np.testing.assert_array_equal(g, with_dx[n])


def test_initialisation_follows_the_config(rng):
    model = build_model("small", 5, rng)
    w1 = model.trunk["conv4"].params["W"]                # He: N(0, 2 / fan_in), fan_in = 64 * 9
    assert abs(w1.std() - np.sqrt(2 / 576)) < 0.05 * np.sqrt(2 / 576)
    wh = model.loc.children["conv4"].params["W"]         # Xavier (Caffe): U(+-sqrt(3 / fan_in))
    assert np.abs(wh).max() <= np.sqrt(3 / (128 * 9)) + 1e-7
    assert all(not b.any() for n, b, _ in model.named_parameters() if n.endswith(".b"))
    ssd = build_model(scale_width("ssd300", 0.125), 21, rng)
    np.testing.assert_array_equal(ssd.l2norm.children["conv4_3"].params["weight"], 20.0)


# -- targets and detect: thin wrappers over minissd.boxes ---------------------------------------------
def test_targets_and_detect_round_trip(rng):
    model = build_model("small", 3, rng)
    gt = [np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]]), np.array([[0.2, 0.3, 0.7, 0.9]])]
    labels = [np.array([1, 2]), np.array([2])]
    loc_t, lab = model.targets(gt, labels)
    assert loc_t.shape == (2, 1524, 4) and loc_t.dtype == np.float32 and lab.shape == (2, 1524)
    assert set(np.unique(lab[0])) == {0, 1, 2} and set(np.unique(lab[1])) == {0, 2}
    # Feed the targets back as if the network predicted them perfectly: detect recovers the boxes.
    conf = np.full((2, 1524, 3), -10.0, np.float32)
    conf[np.arange(2)[:, None], np.arange(1524)[None, :], lab] = 10.0
    dets = model.detect(loc_t, conf)
    assert len(dets) == 2
    for d, g, lab_g in zip(dets, gt, labels, strict=True):
        assert len(d.boxes) == len(g)
        np.testing.assert_allclose(np.sort(d.boxes, axis=0), np.sort(g, axis=0), atol=1e-5)
        assert sorted(d.labels.tolist()) == sorted(lab_g.tolist())
        # each box comes back with its own label (not just the right multiset of labels)
        for box, label in zip(d.boxes, d.labels, strict=True):
            k = int(np.argmin(np.abs(g - box).sum(axis=1)))
            np.testing.assert_allclose(box, g[k], atol=1e-5)
            assert label == lab_g[k]


# -- save / load -------------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(tmp_path, rng):
    model = build_model("small", 5, rng)
    names = ["circle", "square", "triangle", "star"]
    path = save_model(tmp_path / "m.npz", model, {"class_names": names, "iteration": 12})
    back, meta = load_model(path)
    assert meta["class_names"] == names and meta["iteration"] == 12 and meta["num_classes"] == 5
    assert meta["config"] == model.config and "minissd_version" in meta
    assert back.config == model.config and back.num_classes == 5
    for (n1, p1, _), (n2, p2, _) in zip(model.named_parameters(), back.named_parameters(), strict=True):
        assert n1 == n2 and p1.dtype == p2.dtype
        np.testing.assert_array_equal(p1, p2)
    x = rng.standard_normal((1, 3, 128, 128)).astype(np.float32)
    for a, b in zip(model.forward(x), back.forward(x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_save_refuses_wrong_class_names(tmp_path, rng):
    model = build_model("small", 5, rng)
    with pytest.raises(ValueError, match="class_names"):
        save_model(tmp_path / "m.npz", model, {"class_names": ["a", "b"]})


def test_truncated_and_corrupt_model_files_are_clear_errors(tmp_path, rng):
    path = save_model(tmp_path / "m.npz", build_model("small", 5, rng), {})
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path)
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"\x00" * 1000)
    with pytest.raises(CheckpointError, match="g.npz"):
        load_model(garbage)
    plain = save_checkpoint(tmp_path / "plain.npz", {"x": np.zeros(3)}, {})
    with pytest.raises(CheckpointError, match="no model config"):
        load_model(plain)


def test_loading_into_another_config_names_the_parameter_and_both_shapes(tmp_path, rng):
    path = save_model(tmp_path / "m.npz", build_model("small", 5, rng), {})
    other = build_model("small", 21, rng)          # the conf heads are wider
    with pytest.raises(CheckpointError, match=r"'conf\.conv4\.W' has shape \(84, 128, 3, 3\) in the model "
                                              r"but \(20, 128, 3, 3\) in the checkpoint"):
        load_model(path, model=other)
    narrow = build_model(scale_width("small", 0.5), 5, rng)
    with pytest.raises(CheckpointError, match=r"'trunk\.conv1\.W' has shape \(8, 3, 3, 3\) in the model "
                                              r"but \(16, 3, 3, 3\)"):
        load_model(path, model=narrow)
    ssd = build_model(scale_width("ssd300", 0.125), 5, rng)
    with pytest.raises(CheckpointError, match=r"'trunk\.conv1_1\.W' \(shape \(8, 3, 3, 3\) in the model\) "
                                              "is missing"):
        load_model(path, model=ssd)


def test_extra_arrays_ride_along_and_are_not_parameters(tmp_path, rng):
    model = build_model("small", 5, rng)
    path = save_model(tmp_path / "m.npz", model, {}, extra_arrays={"optim/momentum.trunk.conv1.W": np.ones(3)})
    back, _ = load_model(path)
    assert back.num_parameters() == model.num_parameters()
    with pytest.raises(ValueError, match="must contain '/'"):
        save_model(tmp_path / "n.npz", model, {}, extra_arrays={"momentum": np.ones(3)})


# -- input normalisation: part of the config, saved and loaded with the weights ------------------------
@pytest.mark.parametrize("name,std", [("small", IMAGENET_STD), ("ssd300", UNIT_STD), ("ssd512", UNIT_STD)])
def test_each_config_carries_its_input_normalisation(name, std):
    assert MODEL_CONFIGS[name]["input_mean"] == list(VGG_MEAN) == [123.0, 117.0, 104.0]
    assert MODEL_CONFIGS[name]["input_std"] == list(std)
    assert input_normalisation(name) == (VGG_MEAN, std)
    narrow = scale_width(name, 0.125)            # a derived config keeps its parent's normalisation
    assert input_normalisation(narrow) == (VGG_MEAN, std)


def test_the_model_takes_its_normalisation_from_the_config_or_the_caller(rng):
    model = build_model("small", 3, rng)
    assert model.input_mean == (123.0, 117.0, 104.0) and model.input_std == (58.4, 57.1, 57.4)
    assert all(type(v) is float for v in model.input_mean + model.input_std)
    own = build_model("small", 3, rng, input_mean=np.array([1, 2, 3]), input_std=[4.0, 5.0, 6.0])
    assert own.input_mean == (1.0, 2.0, 3.0) and own.input_std == (4.0, 5.0, 6.0)
    assert own.config["input_mean"] == [1.0, 2.0, 3.0]          # the config says what the model uses
    ssd = SSD(scale_width("ssd300", 0.125), 3, rng, input_std=(2, 2, 2))
    assert ssd.input_mean == VGG_MEAN and ssd.input_std == (2.0, 2.0, 2.0)
    own.input_mean = (9, 9, 9)                    # setting it validates and keeps the config in step
    assert own.config["input_mean"] == [9.0, 9.0, 9.0]
    # A config dict from before the keys existed: the named config's pair, else the Caffe convention.
    old = get_config("small")
    del old["input_mean"], old["input_std"]
    assert build_model(old, 3, rng).input_std == IMAGENET_STD
    old["name"] = "my_net"
    assert build_model(old, 3, rng).input_std == UNIT_STD and build_model(old, 3, rng).input_mean == VGG_MEAN


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_mean=(1, 2)), "input_mean must be 3 numbers"),
    (dict(input_mean="rgb"), "input_mean must be 3 numbers"),
    (dict(input_mean=(1, float("nan"), 3)), "input_mean must be 3 finite numbers"),
    (dict(input_std=(1, 0, 1)), "input_std must be positive"),
    (dict(input_std=(1, True, 1)), "input_std must be 3 finite numbers"),
])
def test_bad_normalisation_is_refused(kwargs, match, rng):
    with pytest.raises(ValueError, match=match):
        build_model("small", 3, rng, **kwargs)
    with pytest.raises(ValueError, match=match.split()[0]):
        model = build_model("small", 3, rng)
        for k, v in kwargs.items():
            setattr(model, k, v)
    config = get_config("small")
    config.update({k: list(v) if not isinstance(v, str) else v for k, v in kwargs.items()})
    with pytest.raises(ValueError, match="model config '" + match.split()[0]):
        get_config(config)


def test_normalisation_round_trips_through_save_and_load(tmp_path, rng):
    model = build_model("small", 3, rng, input_mean=(120.5, 110.25, 100.0), input_std=(60.0, 61.0, 62.0))
    path = save_model(tmp_path / "m.npz", model, {"input_mean": [0, 0, 0]})   # the model's values win
    back, meta = load_model(path)
    assert back.input_mean == (120.5, 110.25, 100.0) and back.input_std == (60.0, 61.0, 62.0)
    assert meta["input_mean"] == [120.5, 110.25, 100.0] and meta["input_std"] == [60.0, 61.0, 62.0]
    into = build_model("small", 3, rng)
    assert into.input_mean == VGG_MEAN
    load_model(path, model=into)
    assert into.input_mean == (120.5, 110.25, 100.0) and into.input_std == (60.0, 61.0, 62.0)
    wrong = build_model("small", 5, rng)          # weights that do not fit leave the model as it was
    with pytest.raises(CheckpointError):
        load_model(path, model=wrong)
    assert wrong.input_mean == VGG_MEAN and wrong.input_std == IMAGENET_STD


def _old_format_file(path, model, **meta_extra):
    """A checkpoint as save_model wrote it before the normalisation was part of the config."""
    config = dict(model.config)
    del config["input_mean"], config["input_std"]
    meta = {"format": "minissd.model/1", "config": config, "num_classes": model.num_classes, **meta_extra}
    return save_checkpoint(path, dict(model.state_dict()), meta)


def test_files_written_before_the_change_still_load(tmp_path, rng):
    model = build_model("small", 3, rng)
    # The training command stored the pair as meta "input_mean"/"input_std": those values come back.
    trained = _old_format_file(tmp_path / "trained.npz", model, input_mean=[123.0, 117.0, 104.0],
                               input_std=[58.4, 57.1, 57.4], class_names=["a", "b"])
    back, meta = load_model(trained)
    assert back.input_mean == VGG_MEAN and back.input_std == IMAGENET_STD and meta["class_names"] == ["a", "b"]
    custom = _old_format_file(tmp_path / "custom.npz", model, input_mean=[1, 2, 3], input_std=[4, 5, 6])
    back, _ = load_model(custom)
    assert back.input_mean == (1.0, 2.0, 3.0) and back.input_std == (4.0, 5.0, 6.0)
    # Without them (save_model files): the config's default, by config name.
    bare = _old_format_file(tmp_path / "bare.npz", model)
    back, meta = load_model(bare)
    assert back.input_mean == VGG_MEAN and back.input_std == IMAGENET_STD and "input_mean" not in meta
    for (_, p1, _), (_, p2, _) in zip(model.named_parameters(), back.named_parameters(), strict=True):
        np.testing.assert_array_equal(p1, p2)
    into = build_model("small", 3, rng, input_mean=(7, 7, 7))
    load_model(bare, model=into)
    assert into.input_mean == VGG_MEAN
    bad = _old_format_file(tmp_path / "bad.npz", model, input_std=[1, 0, 1])
    with pytest.raises(CheckpointError, match="input_std must be positive"):
        load_model(bad)


# -- the prior index: built once by the model, passed to matching -----------------------------------
def test_the_model_owns_its_prior_index(rng):
    model = build_model("small", 3, rng)
    index = model.prior_index
    np.testing.assert_array_equal(index.priors_cxcywh, model.priors_cxcywh)
    np.testing.assert_array_equal(index.order, build_prior_index(model.priors_cxcywh).order)
    gt = [np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]]), np.zeros((0, 4))]
    labels = [np.array([1, 2]), np.zeros(0, np.int64)]
    _, lab = model.targets(gt, labels)
    np.testing.assert_array_equal(lab, match_batch(model.priors_cxcywh, gt, labels)[0])   # index built on the spot
    model.targets(gt, labels)
    assert model.prior_index is index             # built once, not per call


# -- CPU == GPU ------------------------------------------------------------------------------------
@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name,width", [("small", 1.0), ("ssd300", 0.125)])
def test_cpu_and_gpu_agree(name, width, rng):
    # The same float64 model on NumPy and on CuPy: outputs, dL/dx and every gradient.
    import cupy

    from minissd.backend import to_cpu

    config = scale_width(name, width) if width != 1.0 else name
    cpu = build_model(config, 5, rng, dtype=np.float64)
    if cpu.l2norm.children:
        for mod in cpu.l2norm.children.values():
            mod.params["weight"][...] = rng.uniform(5, 30, mod.params["weight"].shape)
    gpu_model = build_model(config, 5, rng, dtype=np.float64)
    gpu_model.load_state_dict(cpu.state_dict())
    gpu_model.to("cuda")
    s = cpu.image_size
    x = rng.standard_normal((2, 3, s, s))
    loc, conf = cpu.forward(x)
    d_loc, d_conf = rng.standard_normal(loc.shape), rng.standard_normal(conf.shape)
    dx = cpu.backward(d_loc, d_conf)
    loc_g, conf_g = gpu_model.forward(cupy.asarray(x))
    assert isinstance(loc_g, cupy.ndarray)
    dx_g = gpu_model.backward(cupy.asarray(d_loc), cupy.asarray(d_conf))
    pairs = [("loc", loc, loc_g), ("conf", conf, conf_g), ("dx", dx, dx_g)]
    pairs += [(n, g, gg) for (n, _, g), (_, _, gg)
              in zip(cpu.named_parameters(), gpu_model.named_parameters(), strict=True)]
    for n, a, b in pairs:
        b = to_cpu(b)
        err = np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)
        assert err <= 1e-9, f"{n}: CPU and GPU differ by {err:.2e}"
    # targets/detect on the GPU model take and give device arrays where the boxes code does.
    dets = gpu_model.detect(loc_g[:1], conf_g[:1])
    assert len(dets) == 1
