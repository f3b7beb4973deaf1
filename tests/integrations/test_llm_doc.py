"""docs/llm.md's SFT example runs as written, on a tiny Llama and a tiny chat file (the only
edits: its two paths, its step count and its output folder)."""
import json
import os
import re

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("peft")

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "llm.md")


def _example():
    with open(DOC, encoding="utf-8") as f:
        return re.search(r"```python\n(.*?)```", f.read(), re.S).group(1)


def test_the_sft_example_runs_as_written(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = "user assistant : hello hi there how are you fine thanks bye".split()
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<eos>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} "
                          "{% endfor %}{% if add_generation_prompt %}assistant : {% endif %}")
    model_dir = tmp_path / "model"
    fast.save_pretrained(str(model_dir))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                 head_dim=8, max_position_embeddings=64, pad_token_id=0,
                                 eos_token_id=2, bos_token_id=None)).save_pretrained(str(model_dir))
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                      {"role": "assistant", "content": a}]}) + "\n"
                             for q, a in [("hello", "hi there"), ("how are you", "fine thanks"),
                                          ("bye", "bye")] * 4))
    code = _example()
    assert code.count("\n") <= 20  # a short example
    for old, new in (('"path/to/a/causal-lm", "chats.jsonl"', f'{str(model_dir)!r}, {str(chats)!r}'),
                     ("max_steps=100", "max_steps=2, per_device_train_batch_size=4, use_cpu=True, logging_steps=1"),
                     ('"runs/sft-pgd"', repr(str(tmp_path / "out")))):
        assert old in code
        code = code.replace(old, new)
    scope = {}
    exec(compile(code, "docs/llm.md", "exec"), scope)
    trainer = scope["trainer"]
    assert trainer.state.global_step == 2
    logged = [h for h in trainer.state.log_history if "adv_loss" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["adv_loss"])) for h in logged)
    assert type(trainer.adversary).__name__ == "PGD"
