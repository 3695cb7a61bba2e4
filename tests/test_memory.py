"""AML cluster memory (SPEC 6): loss by hand, gradient with the memory held constant, sequential update in backward."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vireid.losses import ClusterMemory
from vireid.losses.memory import memory_update


def _numpy_sequential(memory: np.ndarray, feats: np.ndarray, labels: list[int], m: float) -> np.ndarray:
    """The reference loop in float64: for each sample in order, M[y] = normalise(m M[y] + (1 - m) f_hat)."""
    out = memory.astype(np.float64).copy()
    for f, y in zip(feats.astype(np.float64), labels):
        f = f / np.linalg.norm(f)
        v = m * out[y] + (1 - m) * f
        out[y] = v / np.linalg.norm(v)
    return out


def test_loss_equals_hand_computation() -> None:
    mem = ClusterMemory(2, 2, temperature=0.5)
    mem.reset(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # normalised to e1, e2
    f = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    loss, logits = mem(f, torch.tensor([1, 0]), return_logits=True)
    # f_hat = (0.6, 0.8), (1, 0); logits / 0.5 = (1.2, 1.6), (2, 0)
    np.testing.assert_allclose(logits.detach().numpy(), [[1.2, 1.6], [2.0, 0.0]], atol=1e-6)
    ce0 = -1.6 + math.log(math.exp(1.2) + math.exp(1.6))
    ce1 = -2.0 + math.log(math.exp(2.0) + 1.0)
    assert float(loss) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)


def test_memory_update_by_hand_order_matters() -> None:
    # label 0 receives (0, 1) then (1, 0), m = 0.2:
    # 0.2 (1, 0) + 0.8 (0, 1) = (0.2, 0.8) -> /sqrt(0.68) = (0.242536, 0.970143)
    # 0.2 (0.242536, 0.970143) + 0.8 (1, 0) = (0.848507, 0.194029) -> /0.870409 = (0.974838, 0.222916)
    mem = ClusterMemory(2, 2)
    mem.reset(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    f = torch.tensor([[0.0, 5.0], [2.0, 0.0]], requires_grad=True)
    mem(f, torch.tensor([0, 0])).backward()
    np.testing.assert_allclose(mem.memory.numpy(), [[0.974838, 0.222916], [0.0, 1.0]], atol=1e-5)
    # the reverse order ends elsewhere: (1, 0) leaves row 0 at (1, 0), then (0, 1) gives (0.242536, 0.970143)
    mem.reset(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    f = torch.tensor([[2.0, 0.0], [0.0, 5.0]], requires_grad=True)
    mem(f, torch.tensor([0, 0])).backward()
    np.testing.assert_allclose(mem.memory.numpy(), [[0.242536, 0.970143], [0.0, 1.0]], atol=1e-5)


def test_gradient_is_autograd_with_memory_constant_and_update_is_sequential() -> None:
    g = torch.Generator().manual_seed(0)
    dim, c, b = 6, 4, 9
    centroids = torch.randn(c, dim, generator=g)
    feats = torch.randn(b, dim, generator=g)
    labels = torch.tensor([2, 0, 2, 2, 3, 0, 1, 2, 3])  # label 2 four times, label 0 and 3 twice
    mem = ClusterMemory(dim, c, temperature=0.05, momentum=0.2)
    mem.reset(centroids)
    m0 = mem.memory.clone()
    np.testing.assert_allclose(m0.norm(dim=1).numpy(), 1.0, atol=1e-6)

    f1 = feats.clone().requires_grad_()
    loss, logits = mem(f1, labels, return_logits=True)
    extra = 0.01 * (logits**2).sum()  # a second term on the logits (as AML's KL): its gradient joins the same backward
    (loss + extra).backward()

    f2 = feats.clone().requires_grad_()
    ref_logits = F.normalize(f2, dim=1) @ m0.T / 0.05
    ref = F.cross_entropy(ref_logits, labels) + 0.01 * (ref_logits**2).sum()
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(ref_logits.detach(), labels)), rel=1e-6)
    torch.testing.assert_close(f1.grad, f2.grad, rtol=1e-5, atol=1e-6)

    expected = _numpy_sequential(m0.numpy(), feats.numpy(), labels.tolist(), 0.2)
    np.testing.assert_allclose(mem.memory.numpy(), expected, atol=1e-6)
    assert torch.equal(mem.memory[1] != m0[1], torch.ones(dim, dtype=torch.bool))  # label 1 (once) moved too


def test_memory_update_function_matches_loop_on_random_batches() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        m = rng.normal(size=(7, 5)).astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        labels = rng.integers(0, 7, 30)
        feats = rng.normal(size=(30, 5)).astype(np.float32)
        mt = torch.from_numpy(m.copy())
        memory_update(mt, F.normalize(torch.from_numpy(feats), dim=1), torch.from_numpy(labels), 0.3)
        np.testing.assert_allclose(mt.numpy(), _numpy_sequential(m, feats, labels.tolist(), 0.3), atol=1e-5)


def test_no_update_without_backward_and_bad_labels() -> None:
    mem = ClusterMemory(3, 2)
    mem.reset(torch.eye(2, 3))
    before = mem.memory.clone()
    with torch.no_grad():
        mem(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))
    mem(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))  # features without grad: nothing to backpropagate
    assert torch.equal(mem.memory, before)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        mem(torch.randn(2, 3), torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="features must be \\[B, 3\\]"):
        mem(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="centroids must be \\[C, 3\\]"):
        mem.reset(torch.randn(2, 4))


def test_reset_resizes_and_state_dict_round_trip() -> None:
    mem = ClusterMemory(4, 3)
    mem.reset(np.array([[3.0, 0, 0, 4.0]] * 5))  # NumPy float64 in (cluster_centroids' output), float32 buffer out
    assert mem.num_clusters == 5 and "memory" in dict(mem.named_buffers()) and mem.memory.dtype == torch.float32
    np.testing.assert_allclose(mem.memory.numpy(), [[0.6, 0, 0, 0.8]] * 5, atol=1e-7)
    other = ClusterMemory(4, 2)  # another epoch's cluster count: loading adopts the checkpoint's size
    other.load_state_dict(mem.state_dict())
    assert torch.equal(other.memory, mem.memory)
    with pytest.raises(RuntimeError):
        ClusterMemory(5, 5).load_state_dict(mem.state_dict())


def test_autocast_bf16_loss_is_float32() -> None:
    mem = ClusterMemory(8, 3)
    mem.reset(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)))
    f = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logits = mem(f, torch.tensor([0, 1, 2, 0]), return_logits=True)
    assert loss.dtype == logits.dtype == torch.float32
    ref = F.cross_entropy(F.normalize(f.detach().float(), dim=1) @ mem.memory.T / 0.05, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert f.grad is not None and f.grad.dtype == torch.bfloat16
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(0)
    centroids = torch.randn(3, 4, generator=g)
    batches = [torch.randn(3, 4, generator=g), torch.randn(2, 4, generator=g)]  # unequal batch sizes
    labels = [torch.tensor([0, 2, 0]), torch.tensor([0, 1])]
    mem = ClusterMemory(4, 3)
    mem.reset(centroids)
    f = batches[rank].clone().requires_grad_()
    mem(f, labels[rank]).backward()
    torch.save({"memory": mem.memory, "grad": f.grad}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~10 s on 2 busy cores
def test_ddp_ranks_apply_the_same_gathered_updates(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(r0["memory"], r1["memory"])
    g = torch.Generator().manual_seed(0)
    centroids = torch.randn(3, 4, generator=g)
    feats = torch.cat([torch.randn(3, 4, generator=g), torch.randn(2, 4, generator=g)])
    m0 = F.normalize(centroids, dim=1)
    expected = _numpy_sequential(m0.numpy(), feats.numpy(), [0, 2, 0, 0, 1], 0.2)  # rank 0's batch, then rank 1's
    np.testing.assert_allclose(r0["memory"].numpy(), expected, atol=1e-6)
    # each rank's gradient is its own local loss's gradient (memory before the update)
    for rank, (lo, hi, labels) in enumerate([(0, 3, [0, 2, 0]), (3, 5, [0, 1])]):
        f = feats[lo:hi].clone().requires_grad_()
        F.cross_entropy(F.normalize(f, dim=1) @ m0.T / 0.05, torch.tensor(labels)).backward()
        torch.testing.assert_close((r0, r1)[rank]["grad"], f.grad, rtol=1e-5, atol=1e-6)
