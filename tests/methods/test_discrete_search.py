"""DiscreteAT(search="greedy"): per example, the edits a small greedy search finds against
the current model (attacks.search's one loop), instead of one random edit per word."""
import random

import pytest
import torch
from torch import nn

from advnlp import DiscreteAT
from advnlp.attacks import STOPWORDS, TextClassifier, char_attack, word_typos
from test_discrete import TEXTS, BagOfTokens, _damerau_one, _keyword_data, _loss, _tokenizer


class AttentionBag(nn.Module):
    """Embedding -> attention-weighted sum -> Linear. Unlike a mean, the attention lets one
    word dominate, and gives that word the largest gradient at the embedding output (the
    signal DiscreteAT ranks words by)."""

    def __init__(self, vocab: int, dim: int = 16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.att = nn.Linear(dim, 1)
        self.out = nn.Linear(dim, 2)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        e = self.emb(input_ids)
        a = self.att(e).squeeze(-1).masked_fill(attention_mask == 0, -1e9).softmax(-1)
        return self.out((a.unsqueeze(-1) * e).sum(1))


def _example_loss(model):
    return lambda batch, y: nn.functional.cross_entropy(model(**batch), y, reduction="none")


def _encode(tok, texts):
    return dict(tok(texts, padding=True, return_tensors="pt"))


def _train(search: str, seed: int, tok, texts, labels):
    torch.manual_seed(seed)
    model = AttentionBag(tok.vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    extra = dict(example_loss=_example_loss(model)) if search == "greedy" else {}
    adv = DiscreteAT(model, tok, fraction=0.5, seed=seed, search=search, **extra)
    y = torch.tensor(labels)
    for epoch in range(5):
        for s in range(0, len(texts), 16):
            adv.backward(_loss(model), texts[s:s + 16], y[s:s + 16])
            opt.step()
            opt.zero_grad()
    model.eval()
    return model


def test_greedy_search_makes_the_char_attack_fail_more_often_than_random_edits():
    """A model that keys on one word ('good' / 'bad'), trained briefly with the same seed,
    steps and share of edited examples: trained on the worst typo a search finds, it
    resists the char attack better than trained on random typos (on every seed)."""
    tok = _tokenizer()
    texts, labels = _keyword_data(random.Random(0), 64)
    test_texts, test_labels = _keyword_data(random.Random(1), 40)
    rates = {"random": [], "greedy": []}
    for seed in range(3):
        for search in rates:
            model = _train(search, seed, tok, texts, labels)

            @torch.no_grad()
            def proba(batch_texts, model=model):
                return model(**_encode(tok, batch_texts)).softmax(-1)

            res = char_attack(TextClassifier(proba), test_texts, test_labels, seed=0).summary()
            assert res["clean_accuracy"] == 1.0
            rates[search].append(res["success_rate"])
    assert all(g <= r for g, r in zip(rates["greedy"], rates["random"])), rates
    assert sum(rates["greedy"]) / 3 <= sum(rates["random"]) / 3 - 0.2, rates


def test_greedy_edits_respect_max_change_and_the_untouched_word_rules():
    tok = _tokenizer()
    torch.manual_seed(0)
    model = AttentionBag(tok.vocab_size)
    texts = TEXTS + ["it was 12 good and 2026 bad film of the very music story plot"]
    y = torch.tensor([1, 0, 1, 0, 1])
    adv = DiscreteAT(model, tok, fraction=1.0, max_change=0.25, seed=3, search="greedy",
                     queries=200, example_loss=_example_loss(model))
    edits = 0
    for step in range(4):
        adv.backward(_loss(model), texts, y)
        for i, before, after in adv.last_edits:
            assert before == texts[i]
            a, b = before.split(), after.split()
            assert len(a) == len(b)
            changed = [(x, z) for x, z in zip(a, b) if x != z]
            n_words = sum(any(c.isalnum() for c in w) for w in a)
            assert 1 <= len(changed) <= max(1, int(0.25 * n_words))
            for x, z in changed:
                assert x not in STOPWORDS and len(x) >= 3 and x.isalpha(), x
                assert _damerau_one(x, z), (x, z)
            edits += len(changed)
        model.zero_grad()
    assert edits > len(texts) * 4  # the search edits several words where it may


def _word_gradient_norms(model, tok, texts, y):
    """Per text, per (space-separated) word: the sum over its tokens of ||d loss / d
    embedding output||, by hand (the clean pass's signal)."""
    kept = []
    h = model.emb.register_forward_hook(lambda m, i, out: kept.append(out) or out.retain_grad())
    enc = tok(texts, padding=True, return_tensors="pt")
    nn.functional.cross_entropy(model(**dict(enc)), y).backward()
    h.remove()
    model.zero_grad()
    norms = kept[0].grad.norm(dim=-1)
    out = []
    for i, text in enumerate(texts):
        word = [0.0] * len(text.split())
        for t, w in enumerate(enc.word_ids(i)):
            if w is not None:
                word[w] += float(norms[i, t])
        out.append(word)
    return out


def test_each_example_gets_the_candidate_that_raises_its_loss_most():
    """One word allowed, every candidate scored: each example's edit is the typo of its
    first word (gradient rank) whose best typo raises its loss, and no typo of that word
    raises the loss more (brute force over all of them)."""
    tok = _tokenizer()
    torch.manual_seed(1)
    model = AttentionBag(tok.vocab_size)
    y = torch.tensor([1, 0, 1, 0])
    norms = _word_gradient_norms(model, tok, TEXTS, y)
    adv = DiscreteAT(model, tok, fraction=1.0, max_change=0.1, seed=0, search="greedy",
                     queries=10_000, max_candidates=10_000, example_loss=_example_loss(model))
    adv.backward(_loss(model), TEXTS, y)
    got = {i: after for i, _, after in adv.last_edits}

    with torch.no_grad():
        def losses(texts, label):
            return _example_loss(model)(_encode(tok, texts), torch.full((len(texts),), label))

        checked = 0
        for i, text in enumerate(TEXTS):
            words = text.split()
            clean = float(losses([text], int(y[i]))[0])
            order = sorted((j for j, w in enumerate(words)
                            if w.isalpha() and len(w) >= 3 and w not in STOPWORDS),
                           key=lambda j: (-norms[i][j], j))
            for j in order:
                cands = [" ".join(words[:j] + [v] + words[j + 1:]) for v in word_typos(words[j])]
                scores = losses(cands, int(y[i]))
                if float(scores.max()) > clean:
                    assert got[i] in cands, (text, got[i], words[j])
                    assert float(losses([got[i]], int(y[i]))[0]) >= float(scores.max()) - 1e-6
                    checked += 1
                    break
            else:
                assert i not in got
    assert checked >= 3


def test_the_contract_gradients_added_weights_buffers_and_modes_restored():
    tok = _tokenizer()
    torch.manual_seed(0)
    model = BagOfTokens(tok.vocab_size)  # with BatchNorm: running statistics are buffers
    model.out.eval()  # a module the user left in eval mode stays there
    y = torch.tensor([1, 0, 1, 0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # accumulated from an earlier micro-batch: kept
    adv = DiscreteAT(model, tok, fraction=1.0, adv_weight=0.7, seed=1, search="greedy",
                     example_loss=_example_loss(model))
    loss = adv.backward(_loss(model), TEXTS, y)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    after = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.training and model.norm.training and not model.out.training
    idx = [i for i, _, _ in adv.last_edits]
    assert idx

    # The same step by hand: clean backward, then 0.7 x the edited examples' loss.
    model.load_state_dict(before)
    model.zero_grad()
    clean = _loss(model)(_encode(tok, TEXTS), y)
    clean.backward()
    want = {k: v.clone() for k, v in model.state_dict().items()}
    edited = _loss(model)(_encode(tok, [e for _, _, e in adv.last_edits]), y[idx])
    (0.7 * edited).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad + 1.0, msg=n)
    assert float(loss) == pytest.approx(clean.item())
    for k, v in want.items():  # weights as before, buffers as after the clean pass alone
        assert torch.equal(after[k], v), k


def test_scoring_is_batched_within_the_query_budget_and_the_closure_serves_without_example_loss():
    """Each scoring forward holds at most the batch's size of texts, each example costs at
    most ``queries`` of them, the model scores in eval mode; without example_loss the
    closure scores one text at a time and the search finds the same edits."""
    tok = _tokenizer()
    torch.manual_seed(0)
    model = AttentionBag(tok.vocab_size)
    y = torch.tensor([1, 0, 1, 0])
    sizes, modes = [], set()

    def example_loss(batch, labels):
        sizes.append(len(labels))
        modes.add(model.training)
        return _example_loss(model)(batch, labels)

    a = DiscreteAT(model, tok, fraction=1.0, max_change=0.3, seed=0, search="greedy",
                   queries=12, max_candidates=5, example_loss=example_loss)
    a.backward(_loss(model), TEXTS, y)
    assert max(sizes) <= len(TEXTS) and 4 < sum(sizes) <= 12 * len(TEXTS)
    assert modes == {False} and model.training  # scored in eval mode: no dropout noise
    a.remove()
    model.zero_grad()
    calls = []

    def closure(batch, labels):
        calls.append(len(labels))
        return _loss(model)(batch, labels)

    b = DiscreteAT(model, tok, fraction=1.0, max_change=0.3, seed=0, search="greedy",
                   queries=12, max_candidates=5)
    b.backward(closure, TEXTS, y)
    assert b.last_edits == a.last_edits
    assert calls[0] == 4 and calls[1:-1] == [1] * sum(sizes) and calls[-1] == len(b.last_edits)


def test_greedy_pairs_edit_the_chosen_segment_and_chinese_keeps_function_characters():
    tok = _tokenizer()
    torch.manual_seed(0)
    model = AttentionBag(tok.vocab_size)
    pairs = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[3])]
    adv = DiscreteAT(model, tok, fraction=1.0, segments=1, seed=0, search="greedy", queries=50,
                     example_loss=_example_loss(model))
    adv.backward(_loss(model), pairs, torch.tensor([1, 0]))
    assert adv.last_edits
    for i, before, after in adv.last_edits:
        assert after[0] == before[0] and after[1] != before[1]
    model.zero_grad()
    texts = ["我们今天去北京看电影的很高兴", "北京的电影很好"]
    adv = DiscreteAT(model, tok, fraction=1.0, max_change=0.3, seed=0, search="greedy",
                     queries=50, example_loss=_example_loss(model))
    adv.backward(_loss(model), texts, torch.tensor([1, 0]))
    assert adv.last_edits
    for _, before, after in adv.last_edits:
        assert after != before and after.count("的") == before.count("的")


@pytest.mark.parametrize("kwargs, error", [
    (dict(search="beam"), "search"), (dict(search="greedy", queries=1), "queries"),
    (dict(search="greedy", max_candidates=0), "max_candidates"),
    (dict(search="greedy", candidates=3), "candidates"),
    (dict(search="greedy", example_loss="ce"), "example_loss"),
    (dict(queries=20), "search='greedy'"), (dict(example_loss=lambda b, y: y), "search='greedy'"),
])
def test_bad_search_arguments_are_refused(kwargs, error):
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    with pytest.raises((ValueError, TypeError), match=error):
        DiscreteAT(model, tok, **kwargs)
    assert not model.emb._forward_hooks


def test_an_example_loss_of_the_wrong_shape_is_refused():
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    adv = DiscreteAT(model, tok, fraction=1.0, search="greedy",
                     example_loss=lambda batch, y: _loss(model)(batch, y))
    with pytest.raises(ValueError, match="one loss per example"):
        adv.backward(_loss(model), TEXTS, torch.tensor([1, 0, 1, 0]))


def test_the_repr_names_the_search_and_its_budget():
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    assert "search" not in repr(DiscreteAT(model, tok))
    assert "search='greedy', queries=8, max_candidates=7" in repr(
        DiscreteAT(model, tok, search="greedy"))
