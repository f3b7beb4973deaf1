"""Token classification building blocks: CoNLL / JSONL readers and their errors, sub-word
alignment, seqeval metrics (checked against hand-counted entities), the BiLSTM(-CRF)
tagger, and advnlp's methods on taggers."""
import json

import pytest
import torch

from advnlp.cli.errors import InputError
from advnlp.cli.tasks.tagging import tag as TG
from advnlp.cli.tasks.tagging.tag_data import (check_known_tags, count_invalid_continuations, read_tagged,
                                       spans_to_tags)

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_conll_columns_token_first_tag_last(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL, encoding="utf-8")
    data = read_tagged(str(path))
    assert data.sentences == [(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
                              (["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    assert data.lines == [3, 9] and data.scheme() == "BIO" and data.invalid_continuations == 0


def test_jsonl_tokens_and_spans(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"tokens": ["Peter", "runs"], "tags": ["B-PER", "O"]},
            {"text": "我在 北京大学读书", "entities": [[3, 7, "ORG", "北京大学"]]},
            {"tokens": [], "tags": []}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    data = read_tagged(str(path))
    assert data.sentences[0] == (["Peter", "runs"], ["B-PER", "O"])
    chars, tags = data.sentences[1]
    assert chars == list("我在北京大学读书")  # whitespace is not a token
    assert tags == ["O", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "O"]
    assert data.skipped_empty == 1 and len(data.sentences) == 2


def test_bioes_is_recognised_and_invalid_continuations_counted(tmp_path):
    assert count_invalid_continuations(["O", "I-PER", "B-LOC", "I-PER", "I-PER", "B-X", "E-X"]) == 2
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"tokens": ["a", "b", "c"], "tags": ["S-PER", "O", "I-LOC"]}),
                    encoding="utf-8")
    data = read_tagged(str(path))
    assert data.scheme() == "BIOES" and data.invalid_continuations == 1


@pytest.mark.parametrize("name, text, message", [
    ("a.jsonl", json.dumps({"tokens": ["a", "b"], "tags": ["O"]}), "a.jsonl:1: 2 tokens but 1 tags"),
    ("b.conll", "EU B-ORG\nrejects\n", "b.conll:2: one column"),
    ("c.conll", "EU ORG\n", "c.conll:1: tag 'ORG' is neither O nor"),
    ("d.jsonl", '{"text": "abc", "entities": [[1, 9, "X"]]}', "d.jsonl:1: entity [1, 9, 'X'] is outside"),
    ("e.jsonl", '{"text": "abc", "entities": [[0, 2, "X", "bc"]]}', "the text there is 'ab', not 'bc'"),
    ("f.jsonl", '{"text": "abcd", "entities": [[0, 2, "X"], [1, 3, "Y"]]}', "overlap"),
    ("g.jsonl", "{not json", "g.jsonl:1: not JSON"),
    ("h.jsonl", '{"words": []}', "neither 'tokens'/'tags' nor 'text'/'entities'"),
    ("i.conll", "\n\n-DOCSTART- O\n", "no tagged sentence"),
    ("j.conll", "EU B-ORG\nrejects ORG\n", "j.conll:2: tag 'ORG' is neither O nor"),
    # The spans make the prefixes: type "B-X" would become the tag B-B-X.
    ("k.jsonl", '{"text": "abc", "entities": [[0, 2, "B-X"]]}',
     "k.jsonl:1: entity [0, 2, 'B-X']: its type 'B-X' already has a tag prefix"),
    ("l.jsonl", '{"text": "abc", "entities": [[0, 2, "M-X"]]}', "('X')"),
    # Half a UTF-16 pair (a truncated emoji) is no text: it cannot be saved (issue 27, item 6).
    ("m.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n'
                '{"tokens": ["a", "\\ud83d"], "tags": ["O", "O"]}',
     "m.jsonl:2: \\ud83d is half of a UTF-16 surrogate pair"),
    ("n.jsonl", '{"text": "ab\\udc00", "entities": []}', "n.jsonl:1: \\udc00 is half"),
])
def test_bad_files_name_the_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as e:
        read_tagged(str(path))
    assert message in str(e.value)


def test_an_unknown_validation_tag_is_refused_with_its_line(tmp_path):
    train, dev = tmp_path / "train.conll", tmp_path / "dev.conll"
    train.write_text("EU B-ORG\nsays O\n", encoding="utf-8")
    dev.write_text("Paris B-LOC\n\nEU B-ORG\nsees B-MISC\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"dev.conll:1: validation tag 'B-LOC' never occurs"):
        check_known_tags(read_tagged(str(train)), read_tagged(str(dev)), "validation")


@pytest.mark.parametrize("name, dev, line", [
    ("dev.conll", "Paris B-ORG\nEU O\nsees B-MISC\n", 3),  # a token a line
    ("dev.jsonl", '{"tokens": ["EU"], "tags": ["O"]}\n'
                  '{"tokens": ["Paris", "sees"], "tags": ["B-ORG", "B-MISC"]}\n', 2),
])
def test_an_unknown_tag_is_refused_at_its_own_line(tmp_path, name, dev, line):
    train, path = tmp_path / "train.conll", tmp_path / name
    train.write_text("EU B-ORG\nsays O\n", encoding="utf-8")
    path.write_text(dev, encoding="utf-8")
    with pytest.raises(InputError, match=rf"{name}:{line}: validation tag 'B-MISC' never occurs"):
        check_known_tags(read_tagged(str(train)), read_tagged(str(path)), "validation")


def test_entity_types_that_merely_start_like_a_prefix_are_kept():
    tags = spans_to_tags("abc", [[0, 2, "BIO"], [2, 3, "S"]], "here")[1]
    assert tags == ["B-BIO", "I-BIO", "B-S"]


def test_conll_bytes_that_are_not_utf8_are_refused_at_their_line(tmp_path):
    path = tmp_path / "t.conll"
    path.write_bytes(b"EU B-ORG\n\nsmile O\n\xed\xa0\xbd O\n")  # a surrogate's bytes
    with pytest.raises(InputError, match="t.conll:4: not valid UTF-8"):
        read_tagged(str(path))


def test_spans_may_start_on_whitespace():
    chars, tags = spans_to_tags("a  bc", [[1, 5, "X"]], "here")
    assert chars == ["a", "b", "c"] and tags == ["O", "B-X", "I-X"]


def test_alignment_first_subtoken_and_all_subtokens():
    names = ["O", "B-PER", "I-PER"]
    word_ids = [None, 0, 0, 1, 2, 2, None]  # [CLS] Pe ##ter runs Bla ##ck [SEP]
    tags = [1, 0, 1]
    assert TG.align(word_ids, tags) == [-100, 1, -100, 0, 1, -100, -100]
    cont = TG.continuation_map(names)
    assert cont == [0, 2, 2]
    assert TG.align(word_ids, tags, all_subtokens=True, continuation=cont) == [-100, 1, 2, 0, 1, 2, -100]
    # predictions back to words: the first sub-token's; a truncated 4th word is O (id 0)
    assert TG.words_from_subtokens(word_ids, [9, 1, 7, 0, 2, 7, 9], 4, outside=0) == [1, 0, 2, 0]


def _entities(seq):
    """Hand count: (type, start, end) of B-X I-X* runs (IOB2, strict)."""
    out, i = set(), 0
    while i < len(seq):
        if seq[i].startswith("B-"):
            kind, j = seq[i][2:], i + 1
            while j < len(seq) and seq[j] == f"I-{kind}":
                j += 1
            out.add((kind, i, j))
            i = j
        else:
            i += 1
    return out


def test_metrics_match_a_hand_count_of_entities():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-ORG", "O", "O", "B-PER"]]
    m = TG.tag_metrics(gold, pred)
    g = {(k, s, *e) for s, seq in enumerate(gold) for k, *e in _entities(seq)}
    p = {(k, s, *e) for s, seq in enumerate(pred) for k, *e in _entities(seq)}
    tp = len(g & p)
    precision, recall = tp / len(p), tp / len(g)
    assert m["default"]["micro"]["precision"] == pytest.approx(precision)
    assert m["default"]["micro"]["recall"] == pytest.approx(recall)
    assert m["entity_f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert m["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert m["per_type"]["LOC"]["recall"] == 0.0 and m["per_type"]["ORG"]["support"] == 1
    assert m["token_accuracy"] == pytest.approx(7 / 9)
    assert m["default"]["macro"]["f1"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)


def test_strict_mode_drops_an_entity_that_starts_with_i():
    gold, pred = [["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]]
    m = TG.tag_metrics(gold, pred)
    assert m["default"]["micro"]["f1"] == 1.0  # conlleval reads I-PER after O as a beginning
    assert m["strict"]["micro"]["f1"] == 0.0


@pytest.mark.parametrize("crf", [False, True], ids=["softmax", "crf"])
def test_the_tagger_learns_capitalised_words_are_entities(crf):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    vocab = 40  # ids 2..20 lower-case words, 21..39 capitalised: those are B-ENT
    ids = torch.randint(2, vocab, (64, 10), generator=g)
    lengths = torch.randint(4, 11, (64,), generator=g)
    mask = (torch.arange(10)[None] < lengths[:, None]).long()
    ids = ids * mask
    labels = torch.where(ids >= 21, 1, 0).masked_fill(mask == 0, -100)
    model = TG.BiLSTMTagger(vocab, 2, dim=16, hidden=16, crf=crf, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(40):
        loss = model(ids, mask, labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    names = ["O", "B-ENT"]
    decoded = model.decode(ids, mask)
    gold = [[names[t] for t in row[:n]] for row, n in zip(labels.tolist(), lengths.tolist())]
    pred = [[names[t] for t in row] for row in decoded]
    assert TG.tag_metrics(gold, pred)["entity_f1"] > 0.9


def test_the_crf_refuses_an_unlabelled_first_position():
    model = TG.BiLSTMTagger(10, 3, crf=True)
    ids = torch.tensor([[3, 4, 5]])
    with pytest.raises(ValueError, match="first position"):
        model(ids, torch.ones_like(ids), torch.tensor([[-100, 1, 2]]))


def _tagger_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 30, (4, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1:, 4:] = 0
    ids = ids * mask
    labels = torch.randint(0, 3, (4, 6), generator=g).masked_fill(mask == 0, -100)
    return ids, mask, labels


@pytest.mark.parametrize("crf", [False, True], ids=["softmax", "crf"])
def test_fgm_on_a_tagger_adds_the_hand_computed_adversarial_gradient(crf):
    from advnlp import FGM

    torch.manual_seed(0)
    model = TG.BiLSTMTagger(30, 3, dim=8, hidden=8, crf=crf, dropout=0.0)
    ids, mask, labels = _tagger_batch()
    eps = 0.7
    # by hand: clean gradient, then r = eps * g / ||g|| per sentence over its real tokens
    ref = TG.BiLSTMTagger(30, 3, dim=8, hidden=8, crf=crf, dropout=0.0)
    ref.load_state_dict(model.state_dict())
    saved = {}

    def keep(module, args, out):
        out.retain_grad()
        saved["emb"] = out
    h = ref.embedding.register_forward_hook(keep)
    ref(ids, mask, labels).loss.backward()
    h.remove()
    g = saved["emb"].grad * mask[..., None]
    r = eps * g / g.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
    h = ref.embedding.register_forward_hook(lambda m, a, out: out + r)
    ref(ids, mask, labels).loss.backward()
    h.remove()

    FGM(model, epsilon=eps).backward(lambda: model(ids, mask, labels).loss)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("method", ["pgd", "smart"])
def test_pgd_and_smart_on_a_tagger_leave_weights_and_buffers(method):
    from advnlp import PGD, SMART

    torch.manual_seed(0)
    model = TG.BiLSTMTagger(30, 3, dim=8, hidden=8, crf=True, dropout=0.1).train()
    ids, mask, labels = _tagger_batch(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if method == "pgd":
        loss = PGD(model, steps=2).backward(lambda: model(ids, mask, labels).loss)
    else:
        # the closure's output has .loss and per-token .logits, which SMART compares
        loss = SMART(model).backward(lambda: model(ids, mask, labels))
    assert torch.isfinite(loss)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_metrics_are_plain_python_numbers():
    m = TG.tag_metrics([["B-X", "O"]], [["B-X", "B-X"]])
    values = [m["token_accuracy"], m["entity_f1"], *m["default"]["macro"].values(),
              *m["strict"]["micro"].values(), *m["per_type"]["X"].values()]
    assert all(type(v) in (float, int) for v in values)


def test_bmes_reads_as_bioes(tmp_path):
    path = tmp_path / "msra.txt"
    path.write_text("中 B-ORG\r\n国 M-ORG\r\n队 E-ORG\r\n好 O\r\n\r\n李 S-PER\r\n", encoding="utf-8")
    data = read_tagged(str(path))
    assert data.sentences[0] == (list("中国队好"), ["B-ORG", "I-ORG", "E-ORG", "O"])
    assert data.bmes and data.scheme() == "BIOES" and data.invalid_continuations == 0


def test_jsonl_with_a_bom_and_a_line_separator_inside_a_token(tmp_path):
    # the classification reader's rules: a BOM is fine, U+2028 inside a JSON string is no line end
    path = tmp_path / "t.jsonl"
    row = json.dumps({"tokens": ["a\u2028b", "Bob"], "tags": ["O", "B-PER"]}, ensure_ascii=False)
    path.write_bytes(b"\xef\xbb\xbf" + row.encode("utf-8") + b"\r\n")
    data = read_tagged(str(path))
    assert data.sentences == [(["a\u2028b", "Bob"], ["O", "B-PER"])]
