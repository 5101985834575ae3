"""MSDNet: the official state_dict layout key for key, schedule, concatenation order, forward /
exit_stages / training, official checkpoint loading, and per-exit FLOPs against the published ones."""
import math

import pytest
import torch
from torch import nn

from eexit.models import PRESETS, MSDNet, msdnet_cifar_anytime, msdnet_cifar_budgeted, msdnet_imagenet
from eexit.models.msdnet import ScaleConv
from eexit.nn import set_backend
from eexit.nn.packed_conv import ONEDNN

from helpers import MODULE_TOL, generator, new_seed, randomise_bn

pytestmark = pytest.mark.usefixtures("one_thread")


# The official command lines (README of kalviny/MSDNet-PyTorch) with args.py's defaults.
OFFICIAL_ARGS = {
    "cifar_anytime": dict(nBlocks=7, nChannels=16, base=4, step=2, stepmode="even", growthRate=6,
                          grFactor=[1, 2, 4], bnFactor=[1, 2, 4], data="cifar100"),
    "cifar_budgeted": dict(nBlocks=5, nChannels=16, base=1, step=1, stepmode="lin_grow", growthRate=6,
                           grFactor=[1, 2, 4], bnFactor=[1, 2, 4], data="cifar100"),
    **{f"imagenet_step{k}": dict(nBlocks=5, nChannels=32, base=k, step=k, stepmode="even", growthRate=16,
                                 grFactor=[1, 2, 4, 4], bnFactor=[1, 2, 4, 4], data="ImageNet") for k in (4, 6, 7)},
}


# ----------------------------------------------------------------------------------------------
# An independent description of the official key -> shape layout (models/msdnet.py, read, not run)
# ----------------------------------------------------------------------------------------------

def conv_basic(prefix, n_in, n_out, k):
    """ConvBasic: net.0 Conv2d(bias=False), net.1 BatchNorm2d."""
    return {f"{prefix}.net.0.weight": (n_out, n_in, k, k), **bn(f"{prefix}.net.1", n_out)}


def bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def conv_bn(prefix, n_in, n_out, bn_width, bottleneck=True):
    """ConvBN: [1x1 to min(n_in, bn_width * n_out), BN, ReLU,] 3x3, BN, ReLU."""
    if not bottleneck:
        return conv_basic(prefix, n_in, n_out, 3)
    inner = min(n_in, bn_width * n_out)
    return {f"{prefix}.net.0.weight": (inner, n_in, 1, 1), **bn(f"{prefix}.net.1", inner),
            f"{prefix}.net.3.weight": (n_out, inner, 3, 3), **bn(f"{prefix}.net.4", n_out)}


def official_layout(nBlocks, nChannels, base, step, stepmode, growthRate, grFactor, bnFactor, data,
                    prune="max", reduction=0.5, bottleneck=True):
    """Ordered key -> shape of the official MSDNet(args).state_dict() (without 'module.')."""
    gr, bnf, n_scales = grFactor, bnFactor, len(grFactor)
    steps = [base] + [step if stepmode == "even" else step * i + 1 for i in range(1, nBlocks)]
    n_all = sum(steps)
    num_classes = {"cifar10": 10, "cifar100": 100, "ImageNet": 1000}[data]
    out, heads, n_in, cur = {}, {}, nChannels, 0  # all blocks' keys, then all classifiers' keys
    for b in range(nBlocks):
        pos = 0
        if cur == 0:  # MSDNFirstLayer
            first = "blocks.0.0.layers.0"
            if data.startswith("cifar"):
                out.update(conv_basic(first, 3, nChannels * gr[0], 3))
            else:
                out[f"{first}.0.weight"] = (nChannels * gr[0], 3, 7, 7)
                out[f"{first}.0.bias"] = (nChannels * gr[0],)
                out.update(bn(f"{first}.1", nChannels * gr[0]))
            for s in range(1, n_scales):
                out.update(conv_basic(f"blocks.0.0.layers.{s}", nChannels * gr[s - 1], nChannels * gr[s], 3))
            pos = 1
        for _ in range(steps[b]):
            cur += 1
            if prune == "max":
                interval = math.ceil(n_all / n_scales)
                in_s = n_scales - math.floor(max(0, cur - 2) / interval)
                out_s = n_scales - math.floor((cur - 1) / interval)
            else:
                in_s, out_s = min(n_scales, n_all - cur + 2), min(n_scales, n_all - cur + 1)
            offset = n_scales - out_s
            p = f"blocks.{b}.{pos}.layers"
            first_is_down = in_s > out_s
            for j, s in enumerate(range(offset, n_scales)):
                if j == 0 and not first_is_down:  # ConvNormal
                    out.update(conv_bn(f"{p}.0.conv_normal", n_in * gr[s], growthRate * gr[s], bnf[s], bottleneck))
                else:  # ConvDownNormal(nIn1, nIn2, nOut, ..., bnWidth1, bnWidth2)
                    half = growthRate * gr[s] // 2
                    out.update(conv_bn(f"{p}.{j}.conv_down", n_in * gr[s - 1], half, bnf[s - 1], bottleneck))
                    out.update(conv_bn(f"{p}.{j}.conv_normal", n_in * gr[s], half, bnf[s], bottleneck))
            pos += 1
            n_in += growthRate
            trans = (prune == "max" and in_s > out_s and reduction > 0) or (
                prune == "min" and reduction > 0 and cur in (math.floor(n_all / 3), math.floor(2 * n_all / 3)))
            if trans:
                n_out = math.floor(reduction * n_in)
                for i in range(out_s):
                    out.update(conv_basic(f"blocks.{b}.{pos}.m.{i}", n_in * gr[offset + i], n_out * gr[offset + i], 1))
                pos += 1
                n_in = n_out
        c = n_in * gr[-1]
        hidden = 128 if data.startswith("cifar") else c
        heads.update(conv_basic(f"classifier.{b}.m.0", c, hidden, 3))
        heads.update(conv_basic(f"classifier.{b}.m.1", hidden, hidden, 3))
        heads[f"classifier.{b}.linear.weight"] = (num_classes, hidden)
        heads[f"classifier.{b}.linear.bias"] = (num_classes,)
    return {**out, **heads}


def layout_of(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def preset_models():
    """One model per preset (ImageNet ones built once per module: about 0.5 s each)."""
    torch.manual_seed(0)
    return {name: make() for name, make in PRESETS.items()}


@pytest.mark.parametrize("name", list(OFFICIAL_ARGS))
def test_state_dict_is_the_official_layout(preset_models, name):
    expected = official_layout(**OFFICIAL_ARGS[name])
    got = layout_of(preset_models[name])
    assert list(got) == list(expected), (
        f"{name}: missing {sorted(set(expected) - set(got))[:5]}, extra {sorted(set(got) - set(expected))[:5]}")
    bad = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert not bad, f"{name}: shape mismatches (got, expected): {list(bad.items())[:5]}"


@pytest.mark.parametrize("kwargs", [
    dict(prune="min"), dict(bottleneck=False), dict(reduction=0.0), dict(step_mode="lin_grow", step=1, base=2),
])
def test_variant_layouts(kwargs):
    """prune='min' (transitions at 1/3 and 2/3), no bottleneck, no reduction, lin_grow."""
    cfg = dict(n_blocks=4, n_channels=8, base=3, step=2, step_mode="even", growth_rate=4, gr_factor=[1, 2, 4],
               bn_factor=[1, 2, 4], num_classes=10, dataset="cifar")
    cfg.update(kwargs)
    model = MSDNet(**cfg)
    official = dict(nBlocks=cfg["n_blocks"], nChannels=cfg["n_channels"], base=cfg["base"], step=cfg["step"],
                    stepmode=cfg["step_mode"], growthRate=cfg["growth_rate"], grFactor=cfg["gr_factor"],
                    bnFactor=cfg["bn_factor"], data="cifar10", prune=cfg.get("prune", "max"),
                    reduction=cfg.get("reduction", 0.5), bottleneck=cfg.get("bottleneck", True))
    assert layout_of(model) == official_layout(**official)
    x = torch.randn(2, 3, 32, 32)
    assert [tuple(o.shape) for o in model(x)] == [(2, 10)] * cfg["n_blocks"]


def test_layout_spot_checks(preset_models):
    """Shapes worked out by hand from the official code (independent of both enumerations)."""
    a = layout_of(preset_models["cifar_anytime"])
    # 16 layers, a scale dropped every ceil(16 / 3) = 6 layers; block 0: 16 + 4 * 6 = 40 channels, x4 at scale 2
    assert a["blocks.0.0.layers.0.net.0.weight"] == (16, 3, 3, 3)
    assert a["blocks.0.0.layers.2.net.0.weight"] == (64, 32, 3, 3)
    assert a["classifier.0.m.0.net.0.weight"] == (128, 160, 3, 3)
    assert a["classifier.6.linear.weight"] == (100, 128)
    # layer 1 (blocks.0.1), scale 0: ConvNormal 16 -> 6 with bottleneck min(16, 1 * 6) = 6
    assert a["blocks.0.1.layers.0.conv_normal.net.0.weight"] == (6, 16, 1, 1)
    # scale 1: growth 6 * 2 split in two halves of 6; conv_down 1x1 to min(16, bn_factor[0] * 6) = 6
    assert a["blocks.0.1.layers.1.conv_down.net.0.weight"] == (6, 16, 1, 1)
    assert a["blocks.0.1.layers.1.conv_down.net.3.weight"] == (6, 6, 3, 3)
    assert a["blocks.0.1.layers.1.conv_normal.net.0.weight"] == (12, 32, 1, 1)  # min(32, bn_factor[1] * 6)
    i = layout_of(preset_models["imagenet_step4"])
    assert i["blocks.0.0.layers.0.0.weight"] == (32, 3, 7, 7) and i["blocks.0.0.layers.0.0.bias"] == (32,)
    assert i["classifier.0.m.0.net.0.weight"] == (384, 384, 3, 3)  # (32 + 4 * 16) * 4
    assert i["classifier.0.linear.weight"] == (1000, 384)
    # layer 6 = blocks.1.1 drops scale 0 (interval 5): conv_down 112 -> 16 via a 1x1 of min(112, 1 * 16)
    assert i["blocks.1.1.layers.0.conv_down.net.0.weight"] == (16, 112, 1, 1)
    assert i["blocks.1.2.m.0.net.0.weight"] == (128, 256, 1, 1)  # transition 128 -> 64 at scale 1 (x2)
    assert "blocks.1.1.layers.3.conv_down.net.0.weight" not in i  # 3 scales after the drop


def test_schedule(preset_models):
    anytime, budgeted = preset_models["cifar_anytime"], preset_models["cifar_budgeted"]
    assert anytime.steps == [4, 2, 2, 2, 2, 2, 2] and budgeted.steps == [1, 2, 3, 4, 5]
    assert preset_models["imagenet_step7"].steps == [7] * 5

    def scales(model):
        return [(m.in_scales, m.out_scales) for b in model.blocks for m in b if hasattr(m, "in_scales")]

    def transitions(model):
        return [(b, i) for b, blk in enumerate(model.blocks) for i, m in enumerate(blk) if hasattr(m, "m")]

    assert scales(anytime) == [(3, 3)] * 6 + [(3, 2)] + [(2, 2)] * 5 + [(2, 1)] + [(1, 1)] * 3
    assert transitions(anytime) == [(2, 1), (5, 1)]  # right after layers 7 and 13
    assert scales(budgeted) == [(3, 3)] * 5 + [(3, 2)] + [(2, 2)] * 4 + [(2, 1)] + [(1, 1)] * 4


def test_concatenation_order():
    """[old same-scale maps, strided conv of the finer scale, conv of the same scale]."""
    torch.manual_seed(new_seed())
    unit = ScaleConv(in_same=6, in_finer=4, growth=8, bottleneck=True, bn_same=2, bn_finer=1).eval()
    same, finer = torch.randn(2, 6, 4, 4), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        y = set_backend(unit, "reference")(same, finer)
        assert y.shape == (2, 14, 4, 4)
        torch.testing.assert_close(y[:, :6], same)
        torch.testing.assert_close(y[:, 6:10], unit.conv_down(finer))
        torch.testing.assert_close(y[:, 10:], unit.conv_normal(same))
    assert unit.conv_down.net[0].out_channels == 4  # bottleneck at the finer scale: min(4, 1 * 4)


def test_forward_and_exit_stages():
    seed = new_seed()
    torch.manual_seed(seed)
    model = randomise_bn(msdnet_cifar_anytime(num_classes=10), generator(seed)).eval()
    x = torch.randn(2, 3, 32, 32, generator=generator(seed))
    with torch.no_grad():
        outs = model.set_backend("reference")(x)
        stages, exits = model.exit_stages()
        assert len(stages) == len(exits) == 7 and all(isinstance(s, nn.Module) for s in stages + exits)
        feats, widths = x, []
        for k, (stage, head) in enumerate(zip(stages, exits)):
            feats = stage(feats)
            assert isinstance(feats, list) and feats[-1].shape[-2:] == (8, 8)
            widths.append([f.shape[1] for f in feats])
            torch.testing.assert_close(head(feats), outs[k], rtol=0, atol=0, msg=f"exit {k}, seed {seed}")
        # fused CPU path (folded BN) against the reference
        fused = model.set_backend("auto")(x)
        for k, (a, b) in enumerate(zip(fused, outs)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"exit {k}, seed {seed}")
    assert widths[0] == [40, 80, 160] and len(widths[-1]) == 1  # scales drop to the coarsest one


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_imagenet_stem_inference_path_equals_its_modules(fmt, dtype):
    seed = new_seed()
    torch.manual_seed(seed)
    stem = randomise_bn(msdnet_imagenet(4, 10).blocks[0][0].layers[0], generator(seed), affine=True).eval().to(dtype)
    assert [k for k in stem.state_dict() if not k.startswith("1.")] == ["0.weight", "0.bias"]
    x = torch.randn(1 + seed % 4, 3, 41, 38, generator=generator(seed)).to(dtype).contiguous(memory_format=fmt)
    with torch.no_grad():
        got = stem(x)
        want = stem.set_backend("reference")(x)
    assert got.shape == want.shape == (x.shape[0], 32, 11, 10) and got.is_contiguous(memory_format=fmt)
    tol = MODULE_TOL[torch.bfloat16 if dtype == torch.bfloat16 else torch.float32]
    torch.testing.assert_close(got, want, **tol, msg=f"seed {seed}")
    packed = "conv:packed" in stem._fold._store
    assert packed == (fmt == torch.channels_last and dtype == torch.float32 and ONEDNN)


@pytest.mark.parametrize("case", ["nchw", "one_channel", "bfloat16", "channels_last"])
def test_inference_path_runs_channels_last_whatever_the_input_format(case):
    """MSDStem hands every later layer channels_last maps on an inference path (float32 CPU input in
    any format; a one-channel image's first map copied): exits equal the reference, which keeps x's
    format; bfloat16 input keeps its format (nothing packs it)."""
    seed = new_seed()
    torch.manual_seed(seed)
    c, dtype = (1 if case == "one_channel" else 3), (torch.bfloat16 if case == "bfloat16" else torch.float32)
    model = randomise_bn(MSDNet(3, 8, 2, 1, "even", 4, [1, 2, 4], [1, 2, 4], num_classes=5, dataset="cifar",
                                in_channels=c), generator(seed)).eval().to(dtype)
    x = torch.randn(1 + seed % 3, c, 32, 32, generator=generator(seed)).to(dtype)
    if case == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    stem = model.blocks[0][0]
    with torch.no_grad():
        maps = stem(x)
        ref_maps = set_backend(stem, "reference")(x)
        want = model.set_backend("reference")(x)
        got = model.set_backend("fused")(x)
    packing = ONEDNN and dtype == torch.float32
    for m, r in zip(maps, ref_maps):
        assert m.is_contiguous(memory_format=torch.channels_last) == (packing or case == "channels_last")
        assert r.is_contiguous(memory_format=torch.channels_last) == (case == "channels_last")
    tol = MODULE_TOL[dtype] if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    for k, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, **tol, msg=f"exit {k}, seed {seed}")


def test_real_early_exit_with_the_runner():
    """exit_stages() drives eexit.runner: each sample's logits are forward()'s at the exit it left."""
    from eexit import reference
    from eexit.runner import run_early_exit

    seed = new_seed()
    torch.manual_seed(seed)
    model = randomise_bn(msdnet_cifar_budgeted(num_classes=10), generator(seed)).eval().set_backend("reference")
    x = torch.randn(6, 3, 32, 32, generator=generator(seed))
    with torch.no_grad():
        full = torch.stack(model(x))  # [exits, N, C]
        conf = full.softmax(-1).amax(-1)  # [exits, N]
        thr = conf[:, :3].median(dim=1).values.tolist()[:-1] + [1.0]  # some rows leave early, some late
        out = run_early_exit(*model.exit_stages(), x, thr, gate=reference)
    k = out.exit_index
    assert k.min() >= 0 and len(set(k.tolist())) > 1, f"seed {seed}: exits {k.tolist()}"
    torch.testing.assert_close(out.logits, full[k, torch.arange(6)], rtol=1e-5, atol=1e-5, msg=f"seed {seed}")


def test_training_step():
    seed = new_seed()
    torch.manual_seed(seed)
    model = msdnet_cifar_budgeted(num_classes=10).train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    outs = model(x)
    assert len(outs) == 5 and all(o.shape == (2, 10) and o.requires_grad for o in outs)
    sum(nn.functional.cross_entropy(o, y) for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]} (seed {seed})"


def official_checkpoint(model, drop_num_batches=False):
    state = {"module." + k: v.clone() for k, v in model.state_dict().items()
             if not (drop_num_batches and k.endswith("num_batches_tracked"))}
    return {"epoch": 299, "arch": "msdnet", "state_dict": state, "best_prec1": torch.tensor(75.1),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}


def test_load_official_roundtrip(tmp_path):
    seed = new_seed()
    torch.manual_seed(seed)
    src = randomise_bn(msdnet_cifar_budgeted(), generator(seed))
    path = tmp_path / "model_best.pth.tar"
    torch.save(official_checkpoint(src), path)
    by_preset = MSDNet.load_official(path, preset="cifar_budgeted")
    by_config = MSDNet.load_official(str(path), n_blocks=5, n_channels=16, base=1, step=1, step_mode="lin_grow",
                                     growth_rate=6, gr_factor="1-2-4", bn_factor=[1, 2, 4], num_classes=100,
                                     dataset="cifar")
    bare = MSDNet.load_official(official_checkpoint(src, drop_num_batches=True)["state_dict"],
                                preset="cifar_budgeted")
    ref = src.state_dict()
    for model in (by_preset, by_config, bare):
        assert not model.training
        for k, v in model.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                assert torch.equal(v, ref[k]), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(by_preset(x), src.eval()(x)):
            torch.testing.assert_close(a, b)


def test_load_official_imagenet_state_dict(preset_models):
    """A bare state_dict with the official ImageNet key names (the 7x7 stem conv has a bias)."""
    src = preset_models["imagenet_step4"]
    model = MSDNet.load_official({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}},
                                 preset="imagenet_step4")
    assert torch.equal(model.blocks[0][0].layers[0][0].bias, src.blocks[0][0].layers[0][0].bias)


def test_load_official_errors():
    model = msdnet_cifar_anytime()
    good = official_checkpoint(model)["state_dict"]

    renamed = dict(good)
    renamed["module.blocks.0.1.layers.0.conv_normal.net.9.weight"] = renamed.pop(
        "module.blocks.0.1.layers.0.conv_normal.net.3.weight")
    with pytest.raises(ValueError, match=r"(?s)1 missing keys.*conv_normal\.net\.3\.weight \(expected \(6, 6, 3, 3\)\)"
                                         r".*1 unexpected keys.*conv_normal\.net\.9\.weight \(got \(6, 6, 3, 3\)\)"):
        MSDNet.load_official({"state_dict": renamed}, preset="cifar_anytime")

    reshaped = dict(good)
    reshaped["module.classifier.3.linear.weight"] = torch.zeros(10, 128)
    with pytest.raises(ValueError, match=r"shape mismatches: classifier\.3\.linear\.weight: "
                                         r"expected \(100, 128\), got \(10, 128\)"):
        MSDNet.load_official(reshaped, preset="cifar_anytime")

    with pytest.raises(ValueError, match=r"(?s)does not match MSDNet\(n_blocks=5.*unexpected keys"):
        MSDNet.load_official(good, preset="cifar_budgeted")  # the wrong architecture
    with pytest.raises(ValueError, match="unknown preset"):
        MSDNet.load_official(good, preset="resnet")


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_blocks=0), "n_blocks"),
    (dict(step_mode="linear"), "step_mode"),
    (dict(step=0), "step"),
    (dict(gr_factor=[1, 2]), "bn_factor needs one entry per scale"),
    (dict(gr_factor=[1, 0, 4]), "gr_factor"),
    (dict(growth_rate=5, gr_factor=[1, 1, 2]), "must be even"),
    (dict(prune="mid"), "prune"),
    (dict(reduction=1.5), "reduction"),
    (dict(dataset="cifar100"), "dataset"),
    (dict(num_classes=0), "num_classes"),
    (dict(backend="cuda"), "backend"),
])
def test_constructor_validation(kwargs, match):
    cfg = dict(n_blocks=2, n_channels=8, base=1, step=1, step_mode="even", growth_rate=4, gr_factor=[1, 2, 4],
               bn_factor=[1, 2, 4], num_classes=10, dataset="cifar")
    cfg.update(kwargs)
    with pytest.raises(ValueError, match=match):
        MSDNet(**cfg)


def test_preset_validation():
    with pytest.raises(ValueError, match="step must be 4, 6 or 7"):
        msdnet_imagenet(step=5)


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------


def test_load_official_names_a_bad_file(tmp_path):
    text = tmp_path / "text.pt"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match=r"^checkpoint .*text.pt is not a torch file .*expected a torch file saved "
                                         r"by the official MSDNet code"):
        MSDNet.load_official(text, preset="cifar_anytime")
    with pytest.raises(ValueError, match=r"is a folder, not a file"):
        MSDNet.load_official(tmp_path, preset="cifar_anytime")
