"""AML (SPEC 6): the two stage methods against independent hand computations, the samplers, phase hand-over, and
the whole pipeline on synthetic data (slow): runs end to end, re-clusters, and resumes where it was killed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vireid.clustering.plots import cluster_rows
from vireid.config import load_config
from vireid.data.transforms import aml_stage1_transform
from vireid.errors import ConfigError, DataError
from vireid.losses.memory import ClusterMemory
from vireid.methods.aml import AMLStage1, AMLStage2
from vireid.models import build_model

H, W = 32, 16
REPO = Path(__file__).resolve().parents[1]


def _net(num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18_half", num_classes=num_classes, pretrained="none", specific_stages=-1,
                       non_local=False, gem_learnable=True, neck_init="normal", classifier="circle")


def _u8(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------------------
# independent formulas (written from SPEC 6, not calling vireid.losses)


def _ce_fastreid(logits: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    c = logits.shape[1]
    target = torch.full_like(logits, eps / (c - 1))
    target[torch.arange(len(y)), y] = 1 - eps
    return -(target * logits.log_softmax(1)).sum(1).mean()


def _circle(cos: torch.Tensor, y: torch.Tensor, s: float = 64.0, m: float = 0.35) -> torch.Tensor:
    onehot = F.one_hot(y, cos.shape[1]).bool()
    alpha_p = (1 + m - cos).clamp_min(0).detach()
    alpha_n = (cos + m).clamp_min(0).detach()
    return torch.where(onehot, s * alpha_p * (cos - (1 - m)), s * alpha_n * (cos - m))


def _soft_triplet(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(f.double(), f.double())
    same = y[:, None] == y[None, :]
    hardest_pos = torch.where(same, d, torch.zeros_like(d)).max(1).values
    hardest_neg = torch.where(same, torch.full_like(d, 1e9), d).min(1).values
    return F.softplus(hardest_pos - hardest_neg).mean()


def _kl_sym(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    p, q = student.double().softmax(1), teacher.double().softmax(1)
    return 0.5 * ((q * (q.log() - p.log())).sum() + (p * (p.log() - q.log())).sum())


def _sim(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    s, t = F.normalize(student.double(), dim=1), F.normalize(teacher.double(), dim=1)
    return ((t @ t.T - s @ s.T) ** 2).sum()


def _stage1(kl: float = 0.1) -> AMLStage1:
    transform = aml_stage1_transform(H, W, pad=2)
    return AMLStage1(_net(5, 0), _net(5, 1), transform=transform, kl_weight=kl, sim_weight=0.5)


def test_stage1_terms_equal_the_formulas_of_spec6():
    method = _stage1()
    g = torch.Generator().manual_seed(3)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    batch = method.make_batch(_u8(8, 1), _u8(8, 2), y, y, g)
    assert batch.images.shape == (16, 3, H, W)
    assert batch.modalities.tolist() == [0] * 8 + [1] * 8 and torch.equal(batch.labels, torch.cat([y, y]))
    torch.manual_seed(0)
    terms = method.training_step(batch)

    # recompute every output and term independently (train-mode BN: same inputs, same batch statistics)
    x, xt = batch.images[:8], batch.images[8:]
    zeros = torch.zeros(8, dtype=torch.long)
    o1 = method.model(x, zeros)
    o2 = method.model(xt, zeros)  # the same head as o1 (CMAM model_backbone.py:71-72)
    bn2, cos2 = o2.bn, o2.logits
    o3 = method.model2(xt, zeros)
    outs = [(o1.bn, o1.logits), (bn2, cos2), (o3.bn, o3.logits)]
    for k, (bn, cos) in enumerate(outs, start=1):
        assert terms[f"id{k}"].item() == pytest.approx(_ce_fastreid(_circle(cos, y), y, 0.1).item(), rel=1e-5)
        assert terms[f"tri{k}"].item() == pytest.approx(_soft_triplet(bn, y).item(), rel=1e-4, abs=1e-6)
    # KL on the margin-adjusted Circle logits with the targets (mutual_framework.py:180-181), not on 64 x cosine
    c1, c2, c3 = _circle(o1.logits, y), _circle(cos2, y), _circle(o3.logits, y)
    kl = 0.1 * (_kl_sym(c3, c1) + _kl_sym(c2, c3))
    assert terms["kl"].item() == pytest.approx(kl.item(), rel=1e-4)
    sim = 0.5 * (_sim(o3.bn, o1.bn) + _sim(bn2, o3.bn))
    assert terms["sim"].item() == pytest.approx(sim.item(), rel=1e-4, abs=1e-6)
    parts = sum(v for k, v in terms.items() if k != "loss")
    assert terms["loss"].item() == pytest.approx(parts.item(), rel=1e-6)


def test_stage1_knowledge_flows_one_way():
    """One shared head (no second head); the mutual terms reach model2 (student of o1) and model1's shared head
    through o2 (student of o3); o1, the teacher of o3, is detached (symmetric_kl / similarity_structure)."""
    method = _stage1()
    assert not any(n.startswith("head2") for n, _ in method.named_parameters())
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    batch = method.make_batch(_u8(8, 1), _u8(8, 2), y, y, torch.Generator().manual_seed(3))
    terms = method.training_step(batch)
    (terms["kl"] + terms["sim"]).backward()
    assert method.model2.classifier.weight.grad.abs().max() > 0
    assert method.model.classifier.weight.grad.abs().max() > 0  # via o2 = model1(x_t), the same head
    assert method.model2.backbone.shared.layer1[0].conv1.weight.grad.abs().max() > 0


def test_stage1_kl_off_in_run1():
    terms = _stage1(kl=0.0).training_step(
        _stage1(kl=0.0).make_batch(_u8(8, 1), _u8(8, 2), torch.arange(8) // 2, torch.arange(8) // 2,
                                   torch.Generator().manual_seed(0)))
    assert "kl" not in terms and {"id1", "id2", "id3", "tri1", "tri2", "tri3", "sim"} <= set(terms)


def _stage2(num_samples: int = 10) -> AMLStage2:
    m1, m2 = _net(0, 0), _net(0, 1)
    mems = [ClusterMemory(m1.feature_dim, 1, temperature=0.05, momentum=0.2) for _ in range(2)]
    return AMLStage2(m1, m2, mems[0], mems[1], num_samples=num_samples, height=H, width=W, pad=2)


def test_stage2_terms_and_memory_update():
    method = _stage2()
    torch.manual_seed(5)
    c = F.normalize(torch.randn(3, method.model.feature_dim), dim=1)
    method.memory1.reset(c)
    method.memory2.reset(c.flip(0))
    rgb_y, ir_y = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])
    batch = method.make_batch(_u8(3, 1), _u8(3, 2), rgb_y, ir_y, torch.Generator().manual_seed(1))
    assert batch.images.shape == (12, 3, H, W)  # [x; gray(x)]
    gray = batch.images[6:]
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    assert batch.modalities.tolist() == [0, 0, 0, 1, 1, 1] * 2
    y = torch.cat([rgb_y, ir_y])
    m1_before, m2_before = method.memory1.memory.clone(), method.memory2.memory.clone()
    terms = method.training_step(batch)

    zeros = torch.zeros(6, dtype=torch.long)
    f1 = method.model(batch.images[:6], zeros).bn
    f2 = method.model2(batch.images[6:], zeros).bn
    l1 = F.normalize(f1.double(), dim=1) @ m1_before.double().T / 0.05
    l2 = F.normalize(f2.double(), dim=1) @ m2_before.double().T / 0.05
    assert terms["mem1"].item() == pytest.approx(F.cross_entropy(l1, y).item(), rel=1e-4)
    assert terms["mem2"].item() == pytest.approx(F.cross_entropy(l2, y).item(), rel=1e-4)
    # stage 2: KL(p1||p2) + KL(p2||p1) without the 1/2 (mutual_framework.py:148-151, :211) = 2 x the halved form
    assert terms["kl"].item() == pytest.approx(0.01 * 2 * _kl_sym(l1, l2).item(), rel=1e-4)
    d1 = torch.cdist(F.normalize(f1.double(), dim=1), F.normalize(f1.double(), dim=1))
    d2 = torch.cdist(F.normalize(f2.double(), dim=1), F.normalize(f2.double(), dim=1))
    assert terms["dist"].item() == pytest.approx(0.05 * ((d1 - d2) ** 2).sum().item(), rel=1e-3, abs=1e-6)

    terms["loss"].backward()  # the memories move towards the batch in backward
    assert not torch.allclose(method.memory1.memory, m1_before)
    assert torch.allclose(method.memory1.memory.norm(dim=1), torch.ones(3), atol=1e-5)
    assert method.model2.backbone.shared.conv1.weight.grad.abs().max() > 0  # KL/dist reach model2 (nothing detached)


def test_stage2_state_carries_labels_and_resized_memories():
    a = _stage2(num_samples=6)
    a.memory1.reset(torch.randn(4, a.model.feature_dim))
    a.memory2.reset(torch.randn(4, a.model.feature_dim))
    a.set_pseudo_labels(torch.tensor([0, 1, -1, 2, 3, 3]), epoch=7)
    b = _stage2(num_samples=6)
    b.load_state_dict(a.state_dict())
    assert b.pseudo_labels.tolist() == [0, 1, -1, 2, 3, 3] and int(b.labels_epoch) == 7
    assert torch.equal(b.memory1.memory, a.memory1.memory) and b.memory2.num_clusters == 4


# --------------------------------------------------------------------------------------------------------------------
# samplers and phase hand-over


def test_pseudo_label_sampler_epoch_and_positions():
    from vireid.data.pools import PseudoLabelSampler

    mods = np.array([0, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1])
    cams = np.array([1, 2, 1, 3, 2, 1, 3, 1, 2, 3, 1, 2])
    labels = np.array([0, 0, 1, 1, -1, 2, 2, 0, 1, 2, -1, 0])
    s = PseudoLabelSampler(cams, mods, num_ids=2, num_instances=3, seed=0, rank=0, world_size=1)
    s.set_labels(labels, steps=5)
    s.set_epoch(0)
    batches = list(s)
    assert len(batches) == len(s) == 5  # more steps than one pass over the 3 ids (1 batch): the sampler repeats
    rgb_rows, ir_rows = np.flatnonzero(mods == 0), np.flatnonzero(mods == 1)
    for rgb_idx, ir_idx in batches:
        rows = np.concatenate([rgb_rows[rgb_idx], ir_rows[ir_idx]])
        assert len(rows) == 6 and (labels[rows] >= 0).all()  # outliers are never drawn
        assert len(np.unique(labels[rows])) == 2
    s.set_epoch(0)
    assert [(a.tolist(), b.tolist()) for a, b in s] == [(a.tolist(), b.tolist()) for a, b in batches]
    with pytest.raises(DataError, match="kept 1 pseudo identities"):
        s.set_labels(np.where(labels == 0, 0, -1), steps=1)


def test_stage2_starts_from_stage1_backbones_only(tmp_path):
    from vireid.engine.checkpoint import load_checkpoint, save_checkpoint
    from vireid.methods.aml import AMLPhase, _init_from
    from vireid.methods.base import Phase

    s1 = _stage1()
    with torch.no_grad():
        s1.model.pooling.p.fill_(4.5)
        s1.model.neck.bn.weight.fill_(2.0)
    save_checkpoint(tmp_path / "last.pt", model_state=s1.model.state_dict(), method_state=s1.state_dict(),
                    optimizer_state={}, progress={"epoch": 1, "step_in_epoch": 0, "global_step": 3}, meta={})
    s2 = _stage2()
    p_before = s2.model.pooling.p.detach().clone()
    source = Phase("a", setup=lambda ctx: None, info={"stage": 1})  # type: ignore[arg-type,return-value]
    _init_from(AMLPhase(name="b", stage=2), s2, load_checkpoint(tmp_path / "last.pt")["method"], source)
    for name, value in s1.model.backbone.state_dict().items():
        assert torch.equal(s2.model.backbone.state_dict()[name], value)
    for name, value in s1.model2.backbone.state_dict().items():
        assert torch.equal(s2.model2.backbone.state_dict()[name], value)
    assert torch.equal(s2.model.pooling.p, p_before)  # GeM and BNNeck re-initialised (SPEC 6)
    assert not torch.equal(s2.model.neck.bn.weight, s1.model.neck.bn.weight)


def test_aml_configs_load_and_chain_their_phases():
    expected = {"sysu_mm01": ["stage1_run1", "stage1_run2", "stage2_A", "stage2_B"],
                "sysu_mm02": ["stage1_run1", "stage1_run2", "stage2_A", "stage2_B"],
                "regdb": ["stage1_run1", "stage1_run2", "stage2_B"]}
    for name, phases in expected.items():
        cfg = load_config(REPO / "configs" / "aml" / f"{name}.yaml")
        assert [p.name for p in cfg.method.phases] == phases
        assert cfg.method.name == "aml" and cfg.model.specific_stages == -1 and cfg.model.classifier == "circle"
        assert cfg.method.phases[1].kl_weight == 0.1 and cfg.method.phases[0].kl_weight == 0.0
        assert all(p.init == prev.name for prev, p in zip(cfg.method.phases, cfg.method.phases[1:]))
        assert cfg.method.source.target == name.replace("_", "")
        stage2 = [p for p in cfg.method.phases if p.stage == 2]
        assert [p.clustering for p in stage2] == (["kmeans"] if name == "regdb" else ["dbscan", "kmeans"])
        assert all(p.iterations == 12000 and p.num_ids * p.num_instances == 128 for p in stage2)
    assert load_config(REPO / "configs/aml/regdb.yaml").method.phases[-1].recluster_every == 200
    assert load_config(REPO / "configs/aml/sysu_mm01.yaml").eval.protocol == "sysu-official"
    with pytest.raises(ConfigError, match=r"method.phases\[1\].init"):
        load_config(REPO / "configs/aml/sysu_mm02.yaml",
                    ["method.phases=[{name: a, stage: 1}, {name: b, stage: 2, init: nope}]"])


# --------------------------------------------------------------------------------------------------------------------
# the pipeline on synthetic data (slow)


def _overrides(data: Path, out: Path, it1: int, it2: int, *extra: str) -> list[str]:
    phases = (f"[{{name: s1r1, stage: 1, iterations: {it1}, lr: 3.5e-4, warmup: 1, kl_weight: 0.0, num_ids: 4, "
              f"num_instances: 4}}, {{name: s1r2, stage: 1, init: s1r1, iterations: {it1}, lr: 3.5e-4, warmup: 1, "
              f"kl_weight: 0.1, num_ids: 4, num_instances: 4}}, {{name: s2A, stage: 2, init: s1r2, iterations: {it2}, "
              f"lr: 1.0e-4, warmup: 1, kl_weight: 0.01, clustering: dbscan, num_ids: 4, num_instances: 4}}, "
              f"{{name: s2B, stage: 2, init: s2A, iterations: {it2}, lr: 1.0e-4, warmup: 1, kl_weight: 0.01, "
              f"clustering: kmeans, num_ids: 4, num_instances: 4}}]")
    return [f"data.root={data / 'SYSU-MM02'}", f"method.source.root={data / 'market1501_gen'}",
            f"data.cache_dir={data / 'cache'}", "data.height=32", "data.width=16", "data.workers=0",
            "model.arch=resnet18_half", "model.pretrained=none", "train.device=cpu", "train.threads=2",
            "train.log_every=1", "train.checkpoint_every=2", "method.kmeans_k=12", "method.k1=8", "method.k2=3",
            "method.eps=0.6", "method.min_samples=2", f"output_dir={out}", f"method.phases={phases}", *extra]


@pytest.fixture(scope="module")
def synthetic_aml(tmp_path_factory) -> Path:
    from vireid.data.synthetic import write_synthetic

    base = tmp_path_factory.mktemp("aml_data")
    write_synthetic("market1501_gen", base / "market1501_gen", ids=40, seed=0)
    write_synthetic("sysu_mm02", base / "SYSU-MM02", ids=30, seed=0)
    return base


def _final_state(out: Path, phase: str) -> dict[str, torch.Tensor]:
    return torch.load(out / phase / "last.pt", weights_only=True)["method"]


@pytest.mark.slow
def test_pipeline_runs_every_phase_and_resumes_where_killed(synthetic_aml, tmp_path, monkeypatch):
    import vireid.methods.aml as aml
    from vireid.training import train

    cfg = load_config(REPO / "configs/aml/sysu_mm02.yaml", _overrides(synthetic_aml, tmp_path / "full", 3, 4))
    full = train(cfg, progress=False)
    out = tmp_path / "full"
    for phase in ("s1r1", "s1r2", "s2A", "s2B"):
        assert (out / phase / "last.pt").is_file()
        ckpt = torch.load(out / phase / "last.pt", weights_only=True)
        assert ckpt["progress"]["global_step"] == (3 if phase.startswith("s1") else 4)
        assert ckpt["meta"]["phase"] == phase
    for key in ("untrained", "stage1", "final"):
        assert 0 <= full[key]["rank1"] <= 100 and full[key]["protocol"] == "sysu-mm02"
    assert full["selection"].startswith("final weights")  # SYSU-MM02 has no labelled validation data
    rows = cluster_rows(out, ["s2A", "s2B"])
    assert {r["phase"] for r in rows} == {"s2A", "s2B"} and all("ari" in r and "nmi" in r for r in rows)
    kmeans_rows = [r for r in rows if r["phase"] == "s2B"]
    assert all(r["outlier_fraction_rgb"] == 0 and r["num_clusters"] == 12 for r in kmeans_rows)
    assert (out / "clustering.png").is_file() and (out / "results.json").is_file()

    # the same run killed in stage 2 run A at its 3rd step (last.pt written after step 2), then resumed
    killed = tmp_path / "killed"
    cfg2 = load_config(REPO / "configs/aml/sysu_mm02.yaml", _overrides(synthetic_aml, killed, 3, 4))
    calls = {"n": 0}
    real_call = aml.PoolFetch.__call__

    def dying(self, rgb_idx, ir_idx):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_call(self, rgb_idx, ir_idx)

    monkeypatch.setattr(aml.PoolFetch, "__call__", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg2, progress=False)
    monkeypatch.setattr(aml.PoolFetch, "__call__", real_call)
    assert torch.load(killed / "s2A" / "last.pt", weights_only=True)["progress"]["global_step"] == 2
    assert not (killed / "s2B").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg2, progress=False)
    resumed = train(cfg2, resume=True, progress=False)
    for phase in ("s2A", "s2B"):
        a, b = _final_state(out, phase), _final_state(killed, phase)
        assert a.keys() == b.keys()
        diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].numel())
        assert diff == 0, (phase, diff)
    assert resumed["final"]["rank1"] == full["final"]["rank1"] and resumed["final"]["mAP"] == full["final"]["mAP"]
    cluster_a = [json.dumps(r, sort_keys=True) for r in cluster_rows(out, ["s2A"])]
    cluster_b = [json.dumps(r, sort_keys=True) for r in cluster_rows(killed, ["s2A"])]
    assert [json.loads(r)["ari"] for r in cluster_a] == [json.loads(r)["ari"] for r in cluster_b]
    assert math.isfinite(full["final"]["mAP"])


@pytest.mark.slow
def test_pipeline_under_torchrun_two_processes(synthetic_aml, tmp_path):
    """`torchrun --nproc_per_node 2 -m vireid train configs/aml/...` (gloo on CPU): rank 0 re-clusters and broadcasts
    the labels and centroids, the memories stay in step through the DDP-gathered updates, only rank 0 writes."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vireid",
         "train",
         str(REPO / "configs/aml/sysu_mm02.yaml"), "--quiet", "--set",
         *_overrides(synthetic_aml, out, 2, 3, "train.threads=1")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for phase, steps in (("s1r1", 2), ("s1r2", 2), ("s2A", 3), ("s2B", 3)):
        ckpt = torch.load(out / phase / "last.pt", weights_only=True)
        assert ckpt["meta"]["world_size"] == 2 and ckpt["progress"]["global_step"] == steps
        rows = [json.loads(line) for line in (out / phase / "log.jsonl").read_text().splitlines()]
        assert len([r for r in rows if r["kind"] == "train"]) == steps  # written once (rank 0), not per rank
        if phase.startswith("s2"):
            assert [r["kind"] for r in rows].count("cluster") >= 1
    results = json.loads((out / "results.json").read_text())
    assert all(0 <= results[k]["rank1"] <= 100 for k in ("untrained", "stage1", "final"))
