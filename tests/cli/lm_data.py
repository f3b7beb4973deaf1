"""Tiny causal-LM folders (Llama untied, Qwen2 tied) with a word-level tokenizer and a chat
template, and JSONL data a tiny model can learn: the colour of a thing."""
import json
import os
import random

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> "
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}")
THINGS = {"apple": "red", "sky": "blue", "grass": "green", "sun": "yellow", "snow": "white",
          "coal": "black", "lemon": "yellow", "cherry": "red", "sea": "blue", "leaf": "green"}
WORDS = (["what", "colour", "is", "the", "tell", "me", "of", "a", "it", "?", ".",
          "<|user|>", "<|assistant|>", "<|system|>", "be", "brief"]
         + list(THINGS) + sorted(set(THINGS.values())))
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]


def save_tokenizer(folder, chat_template=True):
    """A word-level tokenizer over WORDS (split on spaces), BOS added to a text, EOS </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    return len(vocab)


def save_lm(folder, kind="llama", chat_template=True, seed=0):
    """A 2-layer causal LM (hidden 16) of ``kind`` over the test vocabulary, dropout off."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    os.makedirs(folder, exist_ok=True)
    n = save_tokenizer(folder, chat_template)
    common = dict(vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                  bos_token_id=2, eos_token_id=3, pad_token_id=0)
    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(head_dim=8, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **common))
    model.save_pretrained(str(folder))
    return str(folder)


def rows(n=60, seed=0, chat=False):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        thing = rng.choice(sorted(THINGS))
        prompt = rng.choice([f"what colour is the {thing} ?", f"tell me the colour of a {thing} .",
                             f"the {thing} is what colour ?"])
        completion = f"the {thing} is {THINGS[thing]} ."
        if chat:
            msgs = ([{"role": "system", "content": "be brief ."}] if i % 2 else []) + [
                {"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            out.append({"messages": msgs})
        else:
            out.append({"prompt": prompt, "completion": completion})
    return out


def write_jsonl(path, items):
    with open(path, "w", encoding="utf-8") as f:
        for r in items:
            f.write(json.dumps(r) + "\n")
    return str(path)
