"""Embedding-space FGSM/PGD on a tiny trained model."""
import pytest
import torch

from advnlp.attacks import embedding_attack
from tinymodels import PAD, MeanPoolClassifier, assert_state_equal, snapshot

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained():
    """Class = which third of the vocabulary the first token is in; trains to ~100%."""
    torch.manual_seed(0)
    model = MeanPoolClassifier(dim=8, classes=3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 40, (96, 6), generator=g)
    ids[48:, -2:] = PAD
    y = (ids[:, 0] - 1) * 3 // 39
    ids[:, 1:] = torch.where(ids[:, 1:] == PAD, PAD, ids[:, :1].expand(-1, 5))  # unambiguous
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(ids), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), [(ids[:48], y[:48]), (ids[48:], y[48:])]


def run(model, batches, eps, **kw):
    return embedding_attack(model, lambda ids: model(ids), batches, eps, **kw)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_curve_is_monotone_and_tiny_epsilon_is_clean(trained, norm):
    model, batches = trained
    eps = [1e-7, 0.1, 0.3, 1.0, 3.0, 10.0] if norm == "l2" else [1e-7, 0.05, 0.2, 0.5, 2.0]
    out = run(model, batches, eps, norm=norm, steps=5)
    clean = sum(int((model(i).argmax(-1) == y).sum()) for i, y in batches) / 96
    assert out["clean_accuracy"] == clean > 0.9
    acc = [out["robust_accuracy"][e] for e in eps]
    assert acc[0] == clean
    assert all(a >= b for a, b in zip(acc, acc[1:]))
    assert acc[-1] < 0.5 * clean  # the attack actually bites at large radii
    assert [c["epsilon"] for c in out["curve"]] == [0.0] + eps
    assert out["success_rate"][eps[-1]] == pytest.approx(1 - acc[-1] / clean)


def test_weights_buffers_grads_and_mode_untouched(trained):
    model, batches = trained
    snap = snapshot(model)
    model.train()
    run(model, batches, [0.5, 2.0], steps=3, random_start=True)
    assert model.training  # restored
    model.eval()
    assert_state_equal(model, snap)  # bit-identical
    assert all(p.grad is None for p in model.parameters())
    assert not model.emb._forward_hooks  # hook removed


@pytest.mark.parametrize("norm,random_start", [("l2", False), ("l2", True), ("linf", True)])
def test_perturbation_stays_in_the_ball_and_off_padding(trained, norm, random_start):
    model, batches = trained
    seen = []

    def model_fn(ids):
        e = model.emb(ids)  # the attack's hook has already added its perturbation
        seen.append((e - model.emb.weight[ids]).detach().double())  # independent recomputation
        return model.encode(e)

    eps = 0.7
    embedding_attack(model, model_fn, batches[1:], [eps], norm=norm, steps=4,
                     random_start=random_start, alpha=0.9)
    ids = batches[1][0]
    deltas = seen[1:]  # the first pass is the clean recording pass
    assert len(deltas) == 5 and deltas[-1].abs().sum() > 0
    for d in deltas:
        if norm == "l2":
            n = d.flatten(1).norm(dim=1)
        else:
            n = d.flatten(1).abs().max(dim=1).values
        assert (n <= eps * (1 + 1e-5)).all(), n.max()
        assert (d[ids == PAD] == 0).all()
    if norm == "l2" and not random_start:  # PGD with a big step reaches the sphere
        assert d.flatten(1).norm(dim=1).min() > eps * 0.99


def test_fgsm_is_one_full_step(trained):
    model, batches = trained
    out = run(model, batches, [0.5], steps=1, norm="linf")
    assert out["method"] == "fgsm" and out["alpha"] == 1.0
    pgd = run(model, batches, [0.5], steps=10, norm="linf")
    assert pgd["alpha"] == 0.25
    assert pgd["robust_accuracy"][0.5] <= out["robust_accuracy"][0.5] + 0.05


def test_seeded_random_start_is_deterministic(trained):
    model, batches = trained
    a = run(model, batches, [1.0], steps=2, random_start=True, seed=1)
    b = run(model, batches, [1.0], steps=2, random_start=True, seed=1)
    assert a["robust_accuracy"] == b["robust_accuracy"]


def test_multi_label_success_is_any_label_flipped():
    torch.manual_seed(0)
    model = MeanPoolClassifier(dim=8, classes=2).eval()
    ids = torch.randint(1, 40, (8, 5))
    y = (model(ids) > 0).float()  # the model is right on every label by construction
    out = embedding_attack(model, model, [(ids, y)], [1e-7, 50.0], multi_label=True, steps=5)
    assert out["clean_accuracy"] == 1.0 and out["robust_accuracy"][1e-7] == 1.0
    assert out["robust_accuracy"][50.0] < 1.0


def test_hugging_face_model(trained):
    from tinymodels import batch, tiny_bert

    model = tiny_bert()
    ids, _ = batch(n=4)
    mask = (ids != PAD).long()
    y = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
    snap = snapshot(model)
    out = embedding_attack(model, lambda b: model(**b).logits,
                           [({"input_ids": ids, "attention_mask": mask}, y)], [1e-7, 5.0], steps=3)
    assert out["clean_accuracy"] == 1.0 == out["robust_accuracy"][1e-7]
    assert_state_equal(model, snap)


@pytest.mark.parametrize("kwargs, match", [
    ({"epsilons": []}, "epsilons is empty"),
    ({"epsilons": [0.1, -1]}, "epsilon must be a finite number > 0"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"norm": "l1"}, "unknown norm='l1'"),
    ({"alpha": -0.5}, "alpha"),
    ({"batches": []}, "batches is empty"),
])
def test_bad_arguments(trained, kwargs, match):
    model, batches = trained
    args = {"epsilons": [0.1], "batches": batches, **kwargs}
    with pytest.raises(ValueError, match=match):
        embedding_attack(model, model, args.pop("batches"), args.pop("epsilons"), **args)


def test_perturbed_outputs_with_a_mask_and_a_relative_radius():
    """One full L2 step on a loss linear in the embedding output: the step is eps times the
    masked gradient's direction, scaled by the example's clean embedding norm over the
    masked positions (relative=True); nothing moves outside the mask. Recomputed here."""
    from advnlp.attacks import perturbed_outputs

    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 4)
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    w = torch.randn(5, 4)
    out = perturbed_outputs(emb, emb, lambda o: (o * w).sum(), ids, [0.5], steps=1,
                            mask=mask, relative=True)
    delta = out[0.5] - out[0.0]
    clean = emb(ids).detach()
    m = mask.unsqueeze(-1).float()
    for i in range(2):
        g = w * m[i]
        want = 0.5 * (clean[i] * m[i]).norm() * g / g.norm()
        torch.testing.assert_close(delta[i], want, atol=1e-5, rtol=1e-4)
    assert torch.all(delta[mask == 0] == 0)
    # absolute units, no mask: every position moves, the step's norm is eps
    out = perturbed_outputs(emb, emb, lambda o: (o * w).sum(), ids, [0.5], steps=1)
    norms = (out[0.5] - out[0.0]).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 0.5))
