"""Tiny, randomly initialised models shared by the tests (no network, seconds).

A plain module (not conftest.py) so that ``from tinymodels import ...`` is
unambiguous next to the sub-suites' own conftest files; ``tests/`` is on
pytest's ``pythonpath``.
"""
import torch
from torch import nn

VOCAB, PAD = 40, 0


class MeanPoolClassifier(nn.Module):
    """nn.Embedding -> mean over *all* positions (padding included) -> Linear.

    Pooling over padding makes the padding positions' gradient non-zero, so a
    missing padding mask shows up in the tests.
    """

    def __init__(self, vocab=VOCAB, dim=8, classes=3, padding_idx=PAD):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=padding_idx)
        self.proj = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, classes)

    def encode(self, e):
        return self.out(torch.tanh(self.proj(e)).mean(dim=1))

    def forward(self, ids):
        return self.encode(self.emb(ids))


class StackClassifier(nn.Module):
    """nn.Embedding -> a stack of two (Linear, tanh) layers in an nn.ModuleList -> mean ->
    Linear: the smallest model with a "stack of layers" (YOPO's inner steps stop in it)."""

    def __init__(self, vocab=VOCAB, dim=8, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.layers = nn.ModuleList([nn.Linear(dim, dim), nn.Linear(dim, dim)])
        self.out = nn.Linear(dim, classes)

    def forward(self, ids):
        h = self.emb(ids)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return self.out(h.mean(dim=1))


class LSTMClassifier(nn.Module):
    def __init__(self, vocab=VOCAB, dim=8, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.norm = nn.BatchNorm1d(dim)
        self.out = nn.Linear(dim, classes)

    def forward(self, ids):
        h, _ = self.lstm(self.emb(ids))
        return self.out(self.norm(h[:, -1]))


def tiny_bert(num_labels=3, problem_type=None, dropout=0.0):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=num_labels,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        pad_token_id=PAD, problem_type=problem_type,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).eval()


def batch(n=4, length=7, seed=1, pad_tail=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    if pad_tail:
        ids[1:, -pad_tail:] = PAD  # example 0 has no padding, the others do
    labels = torch.randint(0, 3, (n,), generator=g)
    return ids, labels


def interrupted_on_call(n, fn):
    """A closure running ``fn``, except that its n-th call raises KeyboardInterrupt."""
    calls = [0]

    def closure():
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return fn()

    return closure


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def assert_state_equal(model, snap):
    state = model.state_dict(keep_vars=True)
    assert state.keys() == snap.keys()
    for k, v in state.items():
        assert torch.equal(v.detach(), snap[k]), f"{k} changed"


def grads(model):
    return {n: (p.grad.detach().clone() if p.grad is not None else None)
            for n, p in model.named_parameters()}


def assert_grads_close(a, b, atol=1e-6, rtol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        if a[k] is None or b[k] is None:
            assert a[k] is None and b[k] is None or (
                (a[k] if a[k] is not None else b[k]).abs().max() == 0), k
            continue
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m: f"{k}: {m}")


def _causal(config_cls, model_cls, **kw):
    cfg = config_cls(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                     **kw)
    torch.manual_seed(0)
    return model_cls(cfg).eval()


def tiny_llama():
    """LlamaForCausalLM, untied, no padding_idx on its embedding (pad_token_id None)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _causal(LlamaConfig, LlamaForCausalLM, head_dim=8)


def tiny_qwen2():
    """Qwen2ForCausalLM with tied input/output embeddings (as the small Qwen2 models)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _causal(Qwen2Config, Qwen2ForCausalLM, tie_word_embeddings=True)


def tiny_gemma():
    """GemmaForCausalLM: tied, and its embedding scales by sqrt(hidden) inside the module."""
    from transformers import GemmaConfig, GemmaForCausalLM

    return _causal(GemmaConfig, GemmaForCausalLM, head_dim=8, pad_token_id=PAD)


def lm_batch(n=3, length=8, prompt=3, padding="right", seed=1):
    """A causal-LM batch: ``input_ids``, ``attention_mask`` and ``labels`` with -100 on the
    prompt (the first ``prompt`` real tokens) and on padding; rows 1.. are 2 tokens shorter,
    padded on the ``padding`` side with token PAD."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    labels = ids.clone()
    for i in range(n):
        real = length if i == 0 else length - 2
        pad = slice(real, None) if padding == "right" else slice(0, length - real)
        start = 0 if padding == "right" else length - real
        ids[i, pad], mask[i, pad], labels[i, pad] = PAD, 0, -100
        labels[i, start:start + prompt] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
