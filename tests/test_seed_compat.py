"""The seed's attack()/restore() loop works after swapping the import, and
gives what the seed's own classes give (re-typed in benchmarks/seed_style.py, the
reference the step-cost benchmark times too)."""
import copy

import pytest
import torch

from advnlp import FGM, PGD
from seed_style import SeedFGM, SeedPGD
from tinymodels import PAD, assert_grads_close, assert_state_equal, batch, grads, snapshot, tiny_bert, tiny_gpt2


def run_fgm_loop(model, fgm, ids, y):
    mask = (ids != PAD).long()
    model(ids, attention_mask=mask, labels=y).loss.backward()
    fgm.attack(epsilon=0.5, emb_name="word_embeddings")
    model(ids, attention_mask=mask, labels=y).loss.backward()  # a NEW forward pass
    fgm.restore(emb_name="word_embeddings")


def run_pgd_loop(model, pgd, ids, y, K=3):
    mask = (ids != PAD).long()
    model(ids, attention_mask=mask, labels=y).loss.backward()
    pgd.backup_grad()
    for t in range(K):
        pgd.attack(epsilon=0.5, alpha=0.2, is_first_attack=(t == 0))
        if t != K - 1:
            model.zero_grad()
        else:
            pgd.restore_grad()
        model(ids, attention_mask=mask, labels=y).loss.backward()
    pgd.restore()


@pytest.mark.parametrize("loop,seed_class,ours", [(run_fgm_loop, SeedFGM, FGM),
                                                  (run_pgd_loop, SeedPGD, PGD)], ids=["fgm", "pgd"])
def test_loop_matches_the_seed_class(loop, seed_class, ours):
    model = tiny_bert()
    ids, y = batch()
    ref = copy.deepcopy(model)
    loop(ref, seed_class(ref), ids, y)
    before = snapshot(model)
    loop(model, ours(model), ids, y)
    assert_grads_close(grads(model), grads(ref), atol=1e-6, rtol=1e-5)
    assert_state_equal(model, before)


def test_restore_without_a_new_forward_pass_warns():
    """The seed's own example reuses the old logits after attack()."""
    model = tiny_bert()
    ids, y = batch()
    out = model(ids, labels=y)
    out.loss.backward(retain_graph=True)
    fgm = FGM(model)
    fgm.attack()
    out.loss.backward()  # the seed's mistake: no new forward
    with pytest.warns(UserWarning, match="no forward pass ran since attack"):
        fgm.restore()


def test_misuse_errors():
    model = tiny_bert()
    fgm = FGM(model)
    with pytest.raises(RuntimeError, match="before attack"):
        fgm.restore()
    with pytest.raises(RuntimeError, match="loss.backward"):
        fgm.attack()
    with pytest.raises(RuntimeError, match="before backup_grad"):
        PGD(model).restore_grad()


def test_emb_name_is_matched_by_whole_names_never_substrings():
    gpt2 = tiny_gpt2()
    ids, _ = batch(pad_tail=0)
    gpt2(ids, labels=ids).loss.backward()
    with pytest.raises(ValueError, match="transformer.wte"):
        FGM(gpt2).attack(emb_name="word_embeddings")  # the seed silently did nothing here
    bert = tiny_bert()
    bert(ids, labels=torch.zeros(4, dtype=torch.long)).loss.backward()
    with pytest.raises(ValueError, match="names no embedding"):
        FGM(bert).attack(emb_name="embeddings")  # the seed also hit LayerNorm and positions
    before = snapshot(bert)
    fgm = FGM(bert)
    fgm.attack(emb_name="bert.embeddings.word_embeddings.weight")
    assert not torch.equal(bert.bert.embeddings.word_embeddings.weight, before["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(bert.bert.embeddings.position_embeddings.weight, before["bert.embeddings.position_embeddings.weight"])
    bert(ids)
    fgm.restore()
    assert_state_equal(bert, before)
