"""DiscreteAT: online discrete adversarial training (typos / word edits inside the step)."""
import random
import string

import pytest
import torch
from torch import nn

from advnlp import FGM, VAT, DiscreteAT
from advnlp.attacks import STOPWORDS, TextClassifier, char_attack

LETTERS = list(string.ascii_lowercase)
WORDS = ("good bad great awful film movie story actor plot scene music really quite very "
         "the a was is it and of this that").split()
CJK = list("我们今天去北京看电影的很高兴好坏")


def _tokenizer():
    from transformers import BertTokenizerFast

    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + CJK + LETTERS
             + ["##" + c for c in LETTERS] + list(".,!"))
    vocab = list(dict.fromkeys(vocab))
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})


class BagOfTokens(nn.Module):
    """Embedding -> masked mean -> (BatchNorm) -> Linear; a dict batch as HF models take."""

    def __init__(self, vocab: int, dim: int = 16, classes: int = 2, key: int = None):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.BatchNorm1d(dim)
        self.out = nn.Linear(dim, classes)
        self.key = key  # if set, only this token id reaches the output (a model that keys on one word)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        e = self.emb(input_ids)
        m = attention_mask.unsqueeze(-1).float()
        if self.key is not None:
            m = m * (input_ids == self.key).unsqueeze(-1).float()
        return self.out(self.norm((e * m).sum(1) / m.sum(1).clamp_min(1.0)))


def _loss(model):
    return lambda batch, y: nn.functional.cross_entropy(model(**batch), y)


def _damerau_one(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        d = [i for i in range(len(a)) if a[i] != b[i]]
        return len(d) == 1 or (len(d) == 2 and d[1] == d[0] + 1 and a[d[0]] == b[d[1]]
                               and a[d[1]] == b[d[0]])
    s, t = (a, b) if len(a) < len(b) else (b, a)
    return any(t[:i] + t[i + 1:] == s for i in range(len(t)))


TEXTS = ["the film was really good and the music was great",
         "this story is awful and the actor was quite bad",
         "it was a very good movie with a great plot",
         "the scene was bad , the plot awful !"]


def test_edits_respect_max_change_and_the_untouched_word_rules():
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    adv = DiscreteAT(model, tok, attack="char", fraction=1.0, max_change=0.25, seed=3)
    for step in range(5):
        adv.backward(_loss(model), TEXTS, torch.tensor([1, 0, 1, 0]))
        assert len(adv.last_edits) == len(TEXTS)
        for i, before, after in adv.last_edits:
            assert before == TEXTS[i]
            a, b = before.split(), after.split()
            assert len(a) == len(b)
            changed = [(x, y) for x, y in zip(a, b) if x != y]
            n_words = sum(any(c.isalnum() for c in w) for w in a)
            assert 1 <= len(changed) <= max(1, int(0.25 * n_words))
            for x, y in changed:
                assert x not in STOPWORDS and len(x) >= 3 and x.isalpha(), x
                assert _damerau_one(x, y), (x, y)
        model.zero_grad()


def test_a_truncated_text_is_edited_and_budgeted_only_where_the_model_reads_it():
    """max_length=10 tokens ([CLS] + 8 + [SEP]): the edits fall in the first 8 words, their
    number is max_change of those 8 (not of all 40), and the unread tail is kept."""
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    long = ["the film was really good and the music was great " * 4] * 4
    adv = DiscreteAT(model, tok, attack="char", fraction=1.0, max_change=0.25, max_length=10,
                     seed=1)
    for _ in range(3):
        adv.backward(_loss(model), long, torch.tensor([1, 0, 1, 0]))
        assert len(adv.last_edits) == 4
        for _, before, after in adv.last_edits:
            a, b = before.split(), after.split()
            changed = [k for k, (x, y) in enumerate(zip(a, b)) if x != y]
            assert a[8:] == b[8:] and len(a) == len(b)
            assert changed and max(changed) < 8
            assert len(changed) <= int(0.25 * 8)  # 4 words of the 8 may be edited
        model.zero_grad()


def test_words_are_ranked_by_the_gradient_at_the_embedding_output():
    """Only the token 'music' reaches the output, so only its gradient is non-zero: with one
    edit per example allowed, 'music' is the word edited."""
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size, key=tok.convert_tokens_to_ids("music"))
    adv = DiscreteAT(model, tok, fraction=1.0, max_change=0.1, seed=0)
    texts = ["the film was really good and the music was great"] * 3
    adv.backward(_loss(model), texts, torch.tensor([1, 1, 1]))
    for _, before, after in adv.last_edits:
        diff = [(x, y) for x, y in zip(before.split(), after.split()) if x != y]
        assert [x for x, _ in diff] == ["music"]


def test_gradients_are_the_clean_ones_plus_the_edited_batchs_and_buffers_are_restored():
    tok = _tokenizer()
    torch.manual_seed(0)
    model = BagOfTokens(tok.vocab_size)
    y = torch.tensor([1, 0, 1, 0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # accumulated from an earlier micro-batch: kept
    adv = DiscreteAT(model, tok, fraction=0.5, adv_weight=0.7, seed=1)
    loss = adv.backward(_loss(model), TEXTS, y)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    after_buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    idx = [i for i, _, _ in adv.last_edits]
    assert len(idx) == 2

    # The same step by hand: clean backward, then 0.7 x the edited examples' loss.
    model.load_state_dict(before)
    model.zero_grad()
    enc = lambda t: {k: v for k, v in tok(t, padding=True, return_tensors="pt").items()}  # noqa: E731
    clean = nn.functional.cross_entropy(model(**enc(TEXTS)), y)
    clean.backward()
    want_buffers = {k: v.clone() for k, v in model.state_dict().items() if k in after_buffers}
    edited = nn.functional.cross_entropy(model(**enc([e for _, _, e in adv.last_edits])), y[idx])
    (0.7 * edited).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad + 1.0, msg=n)
    assert float(loss) == pytest.approx(clean.item())
    for k, v in want_buffers.items():  # BatchNorm statistics: as after the clean pass alone
        torch.testing.assert_close(after_buffers[k], v, msg=k)


def test_combined_with_fgm_the_clean_part_is_fgms_step():
    tok = _tokenizer()
    torch.manual_seed(0)
    model = BagOfTokens(tok.vocab_size)
    model.norm = nn.Identity()
    y = torch.tensor([1, 0, 1, 0])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    fgm = FGM(model, epsilon=0.5)
    adv = DiscreteAT(model, tok, method=fgm, fraction=1.0, seed=2)
    adv.backward(_loss(model), TEXTS, y)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    edits = [e for _, _, e in adv.last_edits]
    adv.remove()

    model.load_state_dict(start)
    model.zero_grad()
    alone = FGM(model, epsilon=0.5)
    batch = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    alone.backward(lambda: _loss(model)(batch, y))
    nn.functional.cross_entropy(model(**dict(tok(edits, padding=True, return_tensors="pt"))),
                                y).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)


def test_the_draws_are_seeded_per_step_and_resume_from_the_state_dict():
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    y = torch.tensor([1, 0, 1, 0])
    a = DiscreteAT(model, tok, fraction=0.5, seed=5)
    a.backward(_loss(model), TEXTS, y)
    first = a.last_edits
    a.backward(_loss(model), TEXTS, y)
    second = a.last_edits
    b = DiscreteAT(model, tok, fraction=0.5, seed=5)
    b.load_state_dict({"steps": 1})
    b.backward(_loss(model), TEXTS, y)
    assert b.last_edits == second != first


def test_examples_with_nothing_to_edit_are_counted_and_cost_no_second_pass():
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    model.norm = nn.Identity()  # a batch of one example
    calls = []

    def closure(batch, y):
        calls.append(len(y))
        return _loss(model)(batch, y)

    adv = DiscreteAT(model, tok, fraction=1.0)
    texts = ["the a it is", "12 34 2026", "a", ""]
    adv.backward(closure, texts, torch.tensor([0, 1, 0, 1]))
    assert calls == [4] and adv.unedited_examples == 4 and adv.edited_examples == 0
    adv.backward(closure, texts[:3] + ["a great film"], torch.tensor([0, 1, 0, 1]))
    assert calls == [4, 4, 1] and adv.unedited_examples == 7 and adv.edited_examples == 1


def test_pairs_edit_the_chosen_segment_only():
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    pairs = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[3])]
    adv = DiscreteAT(model, tok, fraction=1.0, segments=1, seed=0)
    adv.backward(_loss(model), pairs, torch.tensor([1, 0]))
    for i, before, after in adv.last_edits:
        assert after[0] == before[0] and after[1] != before[1]
    both = DiscreteAT(model, tok, fraction=1.0, seed=0, max_change=0.5)
    both.backward(_loss(model), pairs, torch.tensor([1, 0]))
    assert all(a[0] != b[0] and a[1] != b[1] for _, b, a in both.last_edits)


def test_chinese_characters_are_edited_and_function_characters_kept():
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    texts = ["我们今天去北京看电影的很高兴", "北京的电影很好"]
    adv = DiscreteAT(model, tok, fraction=1.0, max_change=0.3, seed=0)
    adv.backward(_loss(model), texts, torch.tensor([1, 0]))
    assert len(adv.last_edits) == 2
    for _, before, after in adv.last_edits:
        assert after != before and after.count("的") == before.count("的")


def test_word_edits_use_the_embedding_neighbours():
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    with torch.no_grad():  # make 'great' the nearest neighbour of 'good'
        model.emb.weight[tok.convert_tokens_to_ids("great")] = model.emb.weight[
            tok.convert_tokens_to_ids("good")] * 1.01
    adv = DiscreteAT(model, tok, attack="word", fraction=1.0, max_change=0.2, seed=0, threshold=0.99)
    adv.backward(_loss(model), TEXTS, torch.tensor([1, 0, 1, 0]))
    for _, before, after in adv.last_edits:
        assert after != before
        words_after = after.split()
        assert set(words_after) <= set(before.split()) | {"great", "good"}  # delete/duplicate/substitute


@pytest.mark.parametrize("kwargs, error", [
    (dict(attack="emoji"), "attack"), (dict(fraction=0), "fraction"), (dict(max_change=1.5), "max_change"),
    (dict(candidates=0), "candidates"), (dict(adv_weight=-1), "adv_weight"), (dict(segments="first"), "segments"),
])
def test_bad_arguments_are_refused_before_anything_is_registered(kwargs, error):
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    with pytest.raises((ValueError, TypeError), match=error):
        DiscreteAT(model, tok, **kwargs)
    assert not model.emb._forward_hooks


@pytest.mark.parametrize("stopwords", ["the", None, 3, ["the", 3]])
def test_stopwords_must_be_a_collection_of_strings(stopwords):
    # a bare 'the' would be the letters {t, h, e}
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    with pytest.raises(TypeError, match="stopwords"):
        DiscreteAT(model, tok, stopwords=stopwords)
    assert not model.emb._forward_hooks


@pytest.mark.parametrize("stopwords", [{"the"}, ["the"], ("the",), frozenset({"the"}), set()])
def test_stopwords_take_any_collection_of_strings(stopwords):
    tok = _tokenizer()
    adv = DiscreteAT(BagOfTokens(tok.vocab_size), tok, stopwords=stopwords)
    assert adv.stopwords == frozenset(stopwords)


def test_bad_companions_and_inputs_are_refused():
    tok = _tokenizer()
    model = BagOfTokens(tok.vocab_size)
    with pytest.raises(ValueError, match="compares logits"):
        DiscreteAT(model, tok, method=VAT(model))
    with pytest.raises(TypeError, match="fast tokenizer"):
        DiscreteAT(model, object())
    adv = DiscreteAT(model, tok)
    with pytest.raises(TypeError, match="list of strings"):
        adv.backward(_loss(model), "one text", torch.tensor([1]))
    with pytest.raises(ValueError, match="2 texts but 3 labels"):
        adv.backward(_loss(model), TEXTS[:2], torch.tensor([1, 0, 1]))
    with pytest.raises(RuntimeError, match="never called"):
        adv.backward(lambda batch, y: torch.zeros((), requires_grad=True), TEXTS[:2], None)


def _keyword_data(rng, n):
    """Positive examples hold 'good', negative 'bad', among neutral filler: one word decides."""
    filler = "film movie story actor plot scene music really quite very the was it".split()
    texts, labels = [], []
    for i in range(n):
        words = rng.sample(filler, 6) + ["good" if i % 2 else "bad"]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(i % 2)
    return texts, labels


def _train(use_adv: bool, tok, texts, labels):
    torch.manual_seed(0)
    model = BagOfTokens(tok.vocab_size, dim=16)
    model.norm = nn.Identity()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    adv = DiscreteAT(model, tok, fraction=1.0, seed=0) if use_adv else None
    y = torch.tensor(labels)
    for epoch in range(30):
        for s in range(0, len(texts), 16):
            bt, by = texts[s:s + 16], y[s:s + 16]
            if adv is None:
                _loss(model)(dict(tok(bt, padding=True, return_tensors="pt")), by).backward()
            else:
                adv.backward(_loss(model), bt, by)
            opt.step()
            opt.zero_grad()
    model.eval()
    return model


def test_training_with_typos_makes_the_char_attack_fail_more_often():
    """A model that keys on one word ('good' / 'bad') falls to one typo of it; trained with
    DiscreteAT it has seen typo'd spellings (their WordPiece letters) and resists."""
    tok = _tokenizer()
    rng = random.Random(0)
    texts, labels = _keyword_data(rng, 64)
    test_texts, test_labels = _keyword_data(random.Random(1), 40)
    rates = {}
    for use_adv in (False, True):
        model = _train(use_adv, tok, texts, labels)

        @torch.no_grad()
        def proba(batch_texts, model=model):
            return model(**dict(tok(batch_texts, padding=True, return_tensors="pt"))).softmax(-1)

        res = char_attack(TextClassifier(proba), test_texts, test_labels, seed=0).summary()
        assert res["clean_accuracy"] == 1.0
        rates[use_adv] = res["success_rate"]
    assert rates[False] >= 0.5 and rates[True] <= rates[False] - 0.3, rates


def test_candidates_train_on_the_edit_set_with_the_highest_batch_loss():
    """candidates=3: three edit sets are drawn and scored without gradients (this crashed
    before: the no-grad score went through the training loss's requires-grad check); the
    edited pass trains on the one with the highest loss."""
    tok = _tokenizer()
    torch.manual_seed(0)
    model = BagOfTokens(tok.vocab_size)
    model.norm = nn.Identity()
    y = torch.tensor([1, 0, 1, 0])
    losses = []

    def closure(batch, labels):
        loss = _loss(model)(batch, labels)
        if not torch.is_grad_enabled():
            losses.append((float(loss), batch["input_ids"].clone()))
        return loss

    adv = DiscreteAT(model, tok, fraction=1.0, candidates=3, seed=0)
    adv.backward(closure, TEXTS, y)
    assert len(losses) == 3
    best = max(losses, key=lambda t: t[0])[1]
    trained = tok([e for _, _, e in adv.last_edits], padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(trained, best)
