"""--online-attack char for taggers: DiscreteAT edits the words of a sentence and every gold
tag stays on its word (checked on the edited pass the model trained on), random and greedy,
HF sub-word and BiLSTM taggers, CJK characters; word edits refused."""
import pytest
from cli_helpers import read_json, run
from tagging_data import sentences

from advnlp import DiscreteAT

NAMES = ["O", "B-ENT", "I-ENT"]


def tagger_of(tiny_tagger, train):
    from advnlp.cli.tasks.tagging.tag import build_tagger

    return build_tagger(tiny_tagger, NAMES, [s for s, _ in train], 64, crf=False,
                        all_subtokens=False)


def edited_pass(tagger, train, search, seed=0):
    """DiscreteAT on the tagger, every sentence selected; each sentence starts with its own
    number ("s0", "s1": never edited, a digit), so an edited row names its sentence. Returns
    the edited pass's texts, word ids and labels (the last encode and the last closure)."""
    from advnlp.cli.tasks.tagging.tag_online import online_encoder, sentence_text, split_batch

    texts, passes, encode = [], [], online_encoder(tagger)

    def spy(batch_texts):
        texts.append(list(batch_texts))
        return encode(batch_texts)

    def closure(batch, tags):
        inputs, labels = split_batch(tagger, batch, tags)
        passes.append((batch["word_ids"].clone(), labels.clone()))
        return tagger.model(**inputs, labels=labels).loss

    extra = {}
    if search == "greedy":
        def example_loss(batch, tags):
            inputs, labels = split_batch(tagger, batch, tags)
            return tagger.sentence_losses(tagger.model(**inputs).logits, labels,
                                          inputs["attention_mask"])
        extra = {"search": "greedy", "example_loss": example_loss}
    adv = DiscreteAT(tagger.model, spy, fraction=1.0, max_change=0.5, seed=seed, **extra)
    index = {n: i for i, n in enumerate(NAMES)}
    adv.backward(closure, [sentence_text(s) for s, _ in train],
                 [[index[t] for t in tags] for _, tags in train])
    assert len(passes) == 2  # the clean pass and the edited one
    return texts[-1], *passes[-1]


def numbered(n, seed):
    return [([f"s{i}", *tokens], ["O", *tags]) for i, (tokens, tags) in enumerate(sentences(n, seed))]


def first_subtoken_labels(word_ids, labels):
    """word -> the label on its first sub-token, read off the encoding (independent of align)."""
    out = {}
    for w, lab in zip(word_ids.tolist(), labels.tolist()):
        if w >= 0 and w not in out:
            out[w] = lab
    return out


@pytest.mark.parametrize("search", ["random", "greedy"])
def test_every_tag_stays_on_its_word_in_the_edited_pass(tiny_tagger, search):
    from advnlp.attacks import word_typos

    train = numbered(12, 0)
    tagger = tagger_of(tiny_tagger, train)
    texts, word_ids, labels = edited_pass(tagger, train, search)
    index = {n: i for i, n in enumerate(NAMES)}
    edits = 0
    for row, text in enumerate(texts):
        words = text.split(" ")
        tokens, tags = train[int(words[0][1:])]
        assert len(words) == len(tokens)  # no word gained or lost
        for new, old in zip(words, tokens):
            assert new == old or new in word_typos(old)  # one typo, in place
            edits += new != old
        firsts = first_subtoken_labels(word_ids[row], labels[row])
        assert firsts and all(firsts[w] == index[tags[w]] for w in firsts)
    assert edits >= len(texts)


def test_cjk_characters_deleted_leave_their_neighbours_tags_in_place(tmp_path):
    """A BiLSTM over CJK characters: whatever the edit (delete leaves an empty word,
    duplicate a two-character word), the words after it keep their tags."""
    from advnlp.cli.tasks.tagging.tag import build_tagger
    from advnlp.cli.tasks.tagging.tag_online import online_encoder, split_batch

    sents = [(list("北京欢迎你们大家好"), ["B-ENT", "I-ENT"] + ["O"] * 7)] * 4
    tagger = build_tagger("bilstm", NAMES, [s for s, _ in sents], 64, crf=False,
                          all_subtokens=False)
    encode = online_encoder(tagger)
    index = {n: i for i, n in enumerate(NAMES)}
    tags = [index[t] for t in sents[0][1]]
    # the edits DiscreteAT makes to CJK text, applied by hand to the joined sentence
    joined = " ".join(sents[0][0])
    deleted = joined.replace("欢", "", 1)           # an empty word where 欢 was
    doubled = joined.replace("迎", "迎迎", 1)        # one word of two characters
    for text in (deleted, doubled):
        batch, _ = encode([text])
        _, labels = split_batch(tagger, batch, [tags])
        words = text.split(" ")
        assert len(words) == 9
        firsts = first_subtoken_labels(batch["word_ids"][0], labels[0])
        assert [firsts[w] for w in range(9)] == tags


def test_the_cli_trains_a_tagger_with_searched_typos(ner, tiny_tagger, tmp_path, capsys):
    for search in ("random", "greedy"):
        out = tmp_path / search
        assert run("train", "--task", "token-classification", "--model", tiny_tagger,
                   "--train", ner["train"], "--test", ner["test"], "--online-attack", "char",
                   "--online-search", search, "--epochs", "1", "--quiet", "--output-dir", out) == 0
        cfg, m = read_json(out, "config.json"), read_json(out, "metrics.json")
        assert (cfg["online_attack"], cfg["online_search"]) == ("char", search)
        assert m["online_attack"]["edited_examples"] > 0


def test_compare_trains_taggers_on_random_and_searched_typos(ner, tmp_path, capsys):
    """compare's entries online-char / greedy-char on a tagger: every entry is built on the
    compare's model before the first run (the tagger's own DiscreteAT over its words, not a
    classifier's), and each run trains on edited sentences."""
    out = tmp_path / "cmp"
    assert run("compare", "--task", "token-classification", "--model", "bilstm", "--train",
               ner["train"], "--test", ner["test"], "--methods", "none,online-char,greedy-char",
               "--epochs", "1", "--attack", "char", "--attack-limit", "5", "--cost-rounds", "0",
               "--quiet", "--output-dir", out) == 0
    assert "Traceback" not in capsys.readouterr().err
    rows = {r["method"]: r for r in read_json(out, "compare.json")["methods"]}
    assert set(rows) == {"none", "online-char", "greedy-char"}
    assert all("attacked_entity_f1@char" in r for r in rows.values())
    for entry, search in (("online-char", "random"), ("greedy-char", "greedy")):
        cfg, m = read_json(out, entry, "config.json"), read_json(out, entry, "metrics.json")
        assert (cfg["online_attack"], cfg["online_search"]) == ("char", search)
        assert m["online_attack"]["edited_examples"] > 0


def test_word_edits_are_refused_for_taggers(ner, tmp_path, capsys):
    assert run("train", "--task", "token-classification", "--model", "bilstm", "--train",
               ner["train"], "--online-attack", "word", "--quiet", "--output-dir", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "--online-attack char" in err and "move the tags" in err and "Traceback" not in err


def test_a_word_with_a_space_is_refused(tmp_path, capsys):
    import json

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"tokens": ["in", "New York", "today"],
                                        "tags": ["O", "B-LOC", "O"]}) + "\n" for _ in range(20)))
    assert run("train", "--task", "token-classification", "--model", "bilstm", "--train", path,
               "--online-attack", "char", "--quiet", "--output-dir", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "'New York'" in err and "Traceback" not in err


def test_a_resumed_tagger_edits_what_the_uninterrupted_run_edited(ner, tmp_path, monkeypatch):
    import os
    import signal

    from safetensors.torch import load_file

    from advnlp.cli.tasks.tagging.tag_run import TagRun

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    argv = ["train", "--task", "token-classification", "--model", "bilstm", "--train",
            ner["train"], "--online-attack", "char", "--online-search", "greedy", "--method",
            "fgm", "--epochs", "2", "--batch-size", "16", "--quiet"]
    assert run(*argv, "--output-dir", straight) == 0
    calls, step = [0], TagRun.task_step

    def step_then_sigint(self, *args):
        loss = step(self, *args)
        calls[0] += 1
        if calls[0] == 12:  # mid-epoch 2 (128 sentences, 8 steps an epoch)
            signal.raise_signal(signal.SIGINT)
        return loss

    with monkeypatch.context() as m:
        m.setattr(TagRun, "task_step", step_then_sigint)
        assert run(*argv, "--output-dir", stopped) == 130
    assert run("train", "--resume", stopped, "--quiet") == 0
    a, b = (load_file(os.path.join(d, "model", "model.safetensors")) for d in (straight, stopped))
    assert all(a[k].equal(b[k]) for k in a)
    assert read_json(straight, "metrics.json")["online_attack"] == \
        read_json(stopped, "metrics.json")["online_attack"]
