"""Methods as plug-ins: the contract every registered method keeps, and a method registered from outside the
package (the worked example of docs/adding_a_method.md) trained end to end."""

from __future__ import annotations

import copy
import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vireid.config import load_config
from vireid.errors import ConfigError
from vireid.methods.registry import get_method, method_names, unregister_method

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.height=64", "data.width=32", "data.workers=0", "model.arch=resnet18_half", "model.pretrained=none",
        "train.device=cpu", "train.threads=2", "eval.trials=2"]
YAML = {"agw": "configs/agw/sysu.yaml", "caj": "configs/caj/sysu.yaml", "msclnet": "configs/msclnet/sysu.yaml",
        "aml": "configs/aml/synthetic.yaml", "deen": "configs/deen/sysu.yaml", "adca": "configs/adca/sysu.yaml"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from vireid.data.synthetic import write_synthetic

    base = tmp_path_factory.mktemp("plugin_data")
    write_synthetic("sysu_mm01", base / "SYSU-MM01", ids=24, seed=0)
    write_synthetic("sysu_mm02", base / "SYSU-MM02", ids=16, seed=0)
    write_synthetic("market1501_gen", base / "market1501_gen", ids=16, seed=0)
    return {"sysu": base / "SYSU-MM01", "mm02": base / "SYSU-MM02", "market": base / "market1501_gen",
            "cache": base / "cache"}


def _cfg(name: str, data: dict[str, Path], out: Path):
    ov = TINY + [f"data.cache_dir={data['cache']}", f"output_dir={out}"]
    if name != "deen":  # DEEN builds its own network from model.arch / model.pretrained only
        ov.append("model.non_local=false")
    if name == "aml":
        ov += [f"data.root={data['mm02']}", f"method.source.root={data['market']}", "train.amp=none"]
    elif name == "adca":  # unsupervised on SYSU-MM01's training images, sized for 24 synthetic ids
        ov += [f"data.root={data['sysu']}", "train.amp=none", "method.rgb_ids=2", "method.ir_ids=2",
               "method.num_instances=4", "method.k1=8", "method.k2=3"]
    else:
        ov += [f"data.root={data['sysu']}", "sampler.num_ids=4"]
    return load_config(REPO / YAML[name], ov)


def test_every_builtin_method_is_registered_with_a_recipe():
    assert {"agw", "caj", "msclnet", "aml", "deen", "adca"} <= set(method_names())
    for name in ("agw", "caj", "msclnet", "aml", "deen", "adca"):
        assert get_method(name).summary


@pytest.mark.parametrize("name", ["agw", "caj", "msclnet", "aml", "deen", "adca"])
def test_method_contract(name, data, tmp_path):
    """Built from its YAML: one step on a fixed batch lowers the loss, the model round-trips through a checkpoint's
    state and rebuild, eval features are unit-norm [B, D]."""
    from vireid.build import device_from_config
    from vireid.checkpoints import model_for_config
    from vireid.data.pools import split_train_val
    from vireid.engine.seeding import make_generator, seed_everything
    from vireid.training import Context

    cfg = _cfg(name, data, tmp_path)
    seed_everything(0, threads=2)
    ds = __import__("vireid.build", fromlist=["x"]).dataset_from_config(cfg.data)
    train, val = split_train_val(ds, cfg.train.validation, cfg.train.holdout_ids, 0)
    ctx = Context(cfg, device_from_config("cpu"), ds, train, val, progress=False)
    plan = get_method(name).plan(cfg.method, ctx)
    run = plan.phases[0].setup(ctx)
    if run.on_epoch_start is not None:  # e.g. ADCA clusters before its first batch, as the trainer does
        run.on_epoch_start(0)
    rgb_idx, ir_idx = next(iter(run.sampler))
    rgb, ir, yr, yi, cr, ci = run.fetch(rgb_idx, ir_idx)
    batch = run.method.make_batch(rgb, ir, yr, yi, make_generator(0, 0), rgb_cams=cr, ir_cams=ci)
    assert batch.images.shape[0] == len(batch.labels) == len(batch.modalities) == len(batch.camids)
    run.method.train()
    for group in run.optimizer.param_groups:  # a small fixed step size: the contract is the direction
        group["lr"] = 1e-3
    losses = []
    for _ in range(5):
        terms = run.method.training_step(batch)
        assert torch.isfinite(terms["loss"]) and set(terms) > {"loss"}
        losses.append(float(terms["loss"].detach()))
        run.optimizer.zero_grad()
        terms["loss"].backward()
        run.optimizer.step()
    assert losses[-1] < losses[0], losses

    model = run.method.model
    rebuilt = model_for_config(cfg, run.num_classes, pretrained="none")
    rebuilt.load_state_dict(copy.deepcopy(model.state_dict()))
    model.eval(), rebuilt.eval()
    x = batch.images[:6]
    with torch.no_grad():
        a, b = model(x, batch.modalities[:6]), rebuilt(x, batch.modalities[:6])
    assert torch.equal(a.bn, b.bn)
    assert a.bn.shape == (6, model.feature_dim)
    assert torch.allclose(a.bn.norm(dim=1), torch.ones(6), atol=1e-5)


def test_a_knob_the_method_does_not_read_is_refused():
    with pytest.raises(ConfigError, match=r"augment.adaptive_gray=0.5 is not used by method agw"):
        load_config(REPO / "configs/agw/sysu.yaml", ["augment.adaptive_gray=0.5"])
    with pytest.raises(ConfigError, match="sampler section is not used by method aml"):
        load_config(REPO / "configs/aml/sysu_mm02.yaml", ["sampler.num_ids=4"])
    with pytest.raises(ConfigError, match=r"model.non_local=False is not used by method deen \(it reads model.arch, "
                                          r"model.pretrained\)"):
        load_config(REPO / "configs/deen/llcm.yaml", ["model.non_local=false"])
    with pytest.raises(ConfigError, match=r"model.last_stride=2 is not used by method deen"):
        load_config(REPO / "configs/deen/sysu.yaml", ["model.last_stride=2"])
    assert load_config(REPO / "configs/deen/sysu.yaml", ["model.arch=resnet18_half"]).model.arch == "resnet18_half"
    with pytest.raises(ConfigError, match="not a registered method; known: .*agw.*caj"):
        load_config(REPO / "configs/agw/sysu.yaml", ["method.name=nope"])


PLUGIN = '''
from dataclasses import dataclass

from vireid.data.transforms import agw_train_transform
from vireid.losses import cross_entropy
from vireid.methods.base import Batch, Method, RunContext, resolve_weights, weighted_terms
from vireid.methods.registry import MethodSettings, MethodSpec, register_method
from vireid.methods.supervised import supervised_plan


@dataclass
class CESettings(MethodSettings):
    name: str = "ce_only"
    label_smoothing: float = 0.0


class CEOnly(Method):
    def __init__(self, model, *, height, width, label_smoothing=0.0):
        super().__init__()
        self.model = model
        self.weights = resolve_weights("ce_only", {"ce": 1.0}, None)
        self.smoothing = label_smoothing
        self.transform = agw_train_transform(height, width)

    def make_batch(self, rgb_u8, ir_u8, rgb_labels, ir_labels, generator, rgb_cams=None, ir_cams=None):
        views = [self.transform(rgb_u8, generator), self.transform(ir_u8, generator)]
        return Batch.of_parts(views, [rgb_labels, ir_labels], [0, 1], [rgb_cams, ir_cams])

    def training_step(self, batch):
        out = self.model(batch.images, batch.modalities)
        return weighted_terms({"ce": cross_entropy(out.logits, batch.labels, self.smoothing)}, self.weights)


def build(settings, ctx: RunContext, num_classes: int):
    return CEOnly(ctx.build_model(num_classes), height=ctx.data.height, width=ctx.data.width,
                  label_smoothing=settings.label_smoothing)


register_method(MethodSpec("ce_only", CESettings, supervised_plan(build), summary="identity CE only",
                           augment_keys=frozenset({"pad", "flip"})))
'''


def test_a_method_registered_from_outside_the_package_trains_end_to_end(data, tmp_path, monkeypatch):
    (tmp_path / "ce_only_method.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "ce.yaml").write_text("method: {name: ce_only, label_smoothing: 0.1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        importlib.import_module("ce_only_method")
        from vireid.training import train

        out = tmp_path / "run"
        cfg = load_config(tmp_path / "ce.yaml", TINY + [
            f"data.root={data['sysu']}", f"data.cache_dir={data['cache']}", f"output_dir={out}",
            "sampler.num_ids=4", "train.epochs=3", "train.steps_per_epoch=8", "train.warmup_epochs=0",
            "train.milestones=[]", "train.log_every=4", "train.lr=0.01", "train.backbone_lr_mult=1.0",
            "train.validation=none"])
        assert cfg.method.label_smoothing == 0.1
        result = train(cfg, progress=False)
        assert 0.0 <= result["rank1"] <= 100.0 and result["selected_checkpoint"] == "last.pt"
        rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        losses = [r["ce"] for r in rows if r.get("kind") == "train"]
        assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2]), losses
        from vireid.checkpoints import load_trained_model

        model, saved, _ = load_trained_model(out / "last.pt")
        assert saved.method.name == "ce_only" and saved.method.label_smoothing == 0.1
    finally:
        unregister_method("ce_only")
        sys.modules.pop("ce_only_method", None)


def test_a_checkpoint_whose_config_carries_a_knob_its_method_never_read_still_loads(tmp_path):
    """A DEEN run written before model.* knobs were refused for DEEN (its config says model.non_local: false, which
    DEEN never read) is rebuilt from its checkpoint; the same key in a config a user writes is refused."""
    import yaml

    from vireid.checkpoints import config_of_checkpoint, load_trained_model, model_for_config
    from vireid.config import without_unread_keys
    from vireid.engine.checkpoint import make_meta, save_checkpoint
    from vireid.settings import to_dict

    cfg = load_config(REPO / "configs/deen/sysu.yaml", ["model.arch=resnet18_half", "model.pretrained=none"])
    stored = to_dict(cfg)
    stored["model"]["non_local"], stored["model"]["neck"] = False, "none"
    stored["augment"]["adaptive_gray"] = 0.5  # not a DEEN knob either
    kept = without_unread_keys(stored)
    assert kept["model"] == {"arch": "resnet18_half", "pretrained": "none"}
    assert "adaptive_gray" not in kept["augment"] and kept["augment"]["erasing"] == stored["augment"]["erasing"]
    assert stored["model"]["non_local"] is False  # the input is not modified

    model = model_for_config(cfg, 5, pretrained="none")
    text = yaml.safe_dump(stored, sort_keys=False)
    loaded = config_of_checkpoint({"meta": {"config_yaml": text}}, tmp_path / "old.pt")
    assert (loaded.method.name, loaded.model.arch, loaded.model.non_local) == ("deen", "resnet18_half", True)
    assert loaded.method == cfg.method and loaded.augment.adaptive_gray == 0.0

    path = tmp_path / "old.pt"
    save_checkpoint(path, model_state=model.state_dict(),
                    meta=make_meta(config_yaml=text, dataset="sysu_mm01", method="deen", num_classes=5))
    rebuilt, _, _ = load_trained_model(path)
    a, b = model.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="model.non_local=False is not used by method deen"):
        load_config(REPO / "configs/deen/sysu.yaml", ["model.arch=resnet18_half", "model.non_local=false"])
