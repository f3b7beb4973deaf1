"""A causal LM's data: JSONL conversations or prompt/completion pairs, as token ids.

Each line of the JSONL file is one example, in one of two forms:

* ``{"messages": [{"role": "user", "content": ...}, ..., {"role": "assistant", ...}]}``:
  rendered by the tokenizer's chat template. The last message is the completion (it must
  be the assistant's); everything before it, with the template's generation prompt, is
  the prompt.
* ``{"prompt": "...", "completion": "..."}``: the prompt as the tokenizer encodes a text
  (its BOS, if it adds one), the completion after it, then the EOS token.

The loss is on the completion's tokens only. An example longer than ``--max-length``
keeps its start (as TRL's SFTTrainer truncates): its completion loses its end, and one
whose prompt alone fills ``--max-length`` has nothing left to train on and is dropped,
counted in a warning; if that leaves no training example, the run is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ...data import json_lines, read_text
from ...errors import InputError

IGNORE = -100  # the label of a position the loss skips (prompt, padding)


@dataclass(frozen=True)
class Conversation:
    """One example as text: what the model reads (``prompt``) and should write
    (``completion``); ``chat``: rendered by the chat template (no special tokens added)."""

    prompt: str
    completion: str
    chat: bool
    where: str  # file:line, for errors


@dataclass(frozen=True)
class Encoded:
    """One example as token ids: the prompt's first ``prompt_length`` of ``ids``."""

    ids: Tuple[int, ...]
    prompt_length: int


def _messages(row: dict, where: str) -> List[dict]:
    msgs = row["messages"]
    ok = isinstance(msgs, list) and msgs and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in msgs)
    if not ok:
        raise InputError(f"{where}: \"messages\" must be a non-empty list of "
                         "{\"role\": ..., \"content\": ...} objects with string values")
    if msgs[-1]["role"] != "assistant":
        raise InputError(f"{where}: the last message is the {msgs[-1]['role']!r}'s; the "
                         "completion trained on is the last message, which must be the "
                         "assistant's")
    if len(msgs) < 2:
        raise InputError(f"{where}: a conversation needs a message before the assistant's "
                         "(the prompt)")
    if not msgs[-1]["content"].strip():
        raise InputError(f"{where}: the assistant's message is empty: nothing to train on")
    return msgs


def read_conversations(path: str) -> List[dict]:
    """The raw rows of a JSONL file, each checked to be one of the two forms."""
    rows = []
    for line, row in json_lines(path, read_text(path)):
        where = f"{path}:{line}"
        if "messages" in row:
            rows.append({"messages": _messages(row, where), "where": where})
        elif "prompt" in row and "completion" in row:
            if not (isinstance(row["prompt"], str) and isinstance(row["completion"], str)):
                raise InputError(f"{where}: \"prompt\" and \"completion\" must be strings")
            if not row["completion"].strip():
                raise InputError(f"{where}: \"completion\" is empty: nothing to train on")
            rows.append({"prompt": row["prompt"], "completion": row["completion"],
                         "where": where})
        else:
            raise InputError(f"{where}: a causal-LM example is {{\"messages\": [...]}} or "
                             f"{{\"prompt\": ..., \"completion\": ...}}; found keys "
                             f"{sorted(row)}")
    if not rows:
        raise InputError(f"{path}: no examples (one JSON object per line)")
    return rows


def render(tokenizer, row: dict) -> Conversation:
    """A raw row as prompt and completion text (conversations through the chat template)."""
    if "messages" not in row:
        return Conversation(row["prompt"], row["completion"], False, row["where"])
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(f"{row['where']}: a conversation (\"messages\") is rendered by the "
                         "tokenizer's chat template, and this model's tokenizer has none; give "
                         "{\"prompt\": ..., \"completion\": ...} lines instead, or a model "
                         "folder whose tokenizer_config.json has a chat_template")
    msgs = row["messages"]
    try:
        prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False,
                                               add_generation_prompt=True)
        full = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception as e:  # a template's own raise_exception(), or a Jinja error
        raise InputError(f"{row['where']}: the chat template refused the conversation "
                         f"({str(e).strip().splitlines()[0] if str(e).strip() else e!r})") from None
    if not full.startswith(prompt):
        raise InputError(f"{row['where']}: the chat template does not render the conversation "
                         "as its prompt followed by the reply, so the completion cannot be "
                         "told apart; give prompt/completion lines instead")
    return Conversation(prompt, full[len(prompt):], True, row["where"])


def encode(tokenizer, c: Conversation, max_length: int) -> Optional[Encoded]:
    """``c`` as ids cut to ``max_length`` (its start kept); None if no completion token is left."""
    # A rendered chat holds its special tokens as text already; a plain prompt gets the
    # tokenizer's own (a BOS), the completion ends with EOS so the model learns to stop.
    prompt = tokenizer(c.prompt, add_special_tokens=not c.chat)["input_ids"]
    completion = list(tokenizer(c.completion, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if not c.chat and eos is not None and (not completion or completion[-1] != eos):
        completion.append(eos)
    ids = (list(prompt) + completion)[:max_length]
    if len(ids) <= len(prompt):
        return None
    return Encoded(tuple(ids), len(prompt))


def encode_all(tokenizer, rows: Sequence[dict], max_length: int, what: str, log) -> List[Encoded]:
    """Every row encoded; rows with no completion token left are dropped with a warning."""
    out = [encode(tokenizer, render(tokenizer, r), max_length) for r in rows]
    kept = [e for e in out if e is not None]
    dropped = len(out) - len(kept)
    if not kept:
        raise InputError(f"every {what} example's prompt fills --max-length {max_length} "
                         "tokens: no completion token is left to train on or score; raise "
                         "--max-length")
    if dropped:
        log(f"warning: {dropped} of {len(out)} {what} examples dropped: the prompt fills "
            f"--max-length {max_length} tokens (no completion token left); raise --max-length")
    return kept


def collate(examples: Sequence[Encoded], pad_id: int) -> dict:
    """A right-padded batch: ``input_ids``, ``attention_mask``, and ``labels`` (the ids on
    the completion, -100 on the prompt and padding)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, e.prompt_length:n] = ids[i, e.prompt_length:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


__all__ = ["Conversation", "Encoded", "IGNORE", "collate", "encode", "encode_all",
           "read_conversations", "render"]
