"""What a causal-LM run is scored by: the completion's loss, clean and under attack.

* ``completion_loss``: the mean negative log-likelihood of the held-out completions'
  tokens (every completion token weighs the same), and ``perplexity`` = exp of it.
* Under attack: L2 PGD on the input-embedding output of the *prompt's* positions only
  (:func:`advnlp.attacks.perturbed_outputs` with ``mask=``), climbing the sum over examples
  of each completion's mean token NLL, with ε *relative* to the prompt's own embedding (its
  L2 norm over the prompt's tokens: ε = 0.1 moves the instruction by a tenth of its size,
  whatever the model's embedding scale). ``robust_completion_loss@ε`` is the token-mean NLL
  at the attack's last point: how far a bounded change of the instruction can push the
  completion's likelihood.
* ``broken_share@ε``: the share of held-out examples whose completion's mean token NLL the
  attack raises by more than ln 2 over its clean value, i.e. the completion becomes less
  than half as likely per token (a geometric mean): a threshold relative to each example,
  so that it means the same for a model that already fits the data well and one that does not.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from advnlp.attacks import perturbed_outputs

from .data import IGNORE, Encoded

BROKEN_RISE = math.log(2)  # a completion counts as broken when its mean NLL rises by this
SCORE = "completion_loss"


def token_nll(logits: torch.Tensor, labels: torch.Tensor):
    """Per example: the summed NLL of its labelled next tokens, and how many there are."""
    target = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target,
                          ignore_index=IGNORE, reduction="none")
    return nll.sum(dim=1), (target != IGNORE).sum(dim=1)


def _chunks(examples: Sequence[Encoded], size: int):
    for i in range(0, len(examples), size):
        yield examples[i:i + size]


def _on(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def completion_scores(lm, examples: Sequence[Encoded], batch_size: int, device) -> Dict[str, float]:
    """``completion_loss`` (token-weighted), ``perplexity``, ``examples`` and ``tokens``."""
    total, tokens = 0.0, 0
    was = lm.model.training
    lm.model.eval()
    try:
        with torch.no_grad():
            for chunk in _chunks(examples, batch_size):
                b = _on(lm.batch(chunk), device)
                logits = lm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                s, n = token_nll(logits, b["labels"])
                total, tokens = total + float(s.sum()), tokens + int(n.sum())
    finally:
        lm.model.train(was)
    loss = total / max(tokens, 1)
    return {"completion_loss": loss, "perplexity": math.exp(min(loss, 700.0)),
            "examples": len(examples), "tokens": tokens}


def prompt_attack(lm, examples: Sequence[Encoded], epsilons: Sequence[float], steps: int,
                  batch_size: int, device, seed: int = 0) -> dict:
    """The completion loss under L2 PGD on the prompt (relative ε), and the broken share."""
    sums = {0.0: 0.0, **{float(e): 0.0 for e in epsilons}}
    per_example: Dict[float, List[float]] = {e: [] for e in sums}
    tokens = 0
    for chunk in _chunks(examples, batch_size):
        b = _on(lm.batch(chunk), device)
        prompt = (b["attention_mask"] == 1) & (b["labels"] == IGNORE)

        def mean_nll(inputs, b=b):
            s, n = token_nll(lm.model(input_ids=inputs["input_ids"],
                                      attention_mask=inputs["attention_mask"]).logits, b["labels"])
            return torch.stack([s, n.to(s.dtype)], dim=1)

        out = perturbed_outputs(lm.model, mean_nll, lambda o: (o[:, 0] / o[:, 1].clamp(min=1)).sum(),
                                b, list(epsilons), steps=steps, mask=prompt, relative=True,
                                seed=seed)
        tokens += int(out[0.0][:, 1].sum())
        for e, o in out.items():
            sums[float(e)] += float(o[:, 0].sum())
            per_example[float(e)] += (o[:, 0] / o[:, 1].clamp(min=1)).tolist()
    clean = per_example[0.0]
    curve = []
    for e in sums:
        broken = sum(a > c + BROKEN_RISE for a, c in zip(per_example[e], clean)) / len(clean)
        curve.append({"epsilon": e, "completion_loss": sums[e] / max(tokens, 1),
                      "broken_share": broken})
    return {"method": "pgd", "norm": "l2", "steps": steps, "examples": len(examples),
            "space": "input-embedding output of the prompt's tokens, one ball per example, "
                     "epsilon relative to the prompt's embedding norm",
            "objective": "sum over examples of the completion's mean token NLL",
            "broken": f"completion mean token NLL raised by more than ln 2 ({BROKEN_RISE:.4f})",
            "curve": curve}


def robust_key(epsilon: float) -> str:
    return f"robust_{SCORE}@{epsilon:g}"


def broken_key(epsilon: float) -> str:
    return f"broken_share@{epsilon:g}"


def generations(lm, examples: Sequence[Encoded], device, new_tokens: int = 32,
                synced: bool = False) -> List[dict]:
    """Greedy continuations of the prompts of ``examples`` (what a person reads); ``synced``:
    a sharded model, every rank generating (each step's forward gathers the shards)."""
    tok, out = lm.tokenizer, []
    was = lm.model.training
    lm.model.eval()
    if synced:  # PEFT's generate enters below the sharded root, whose hooks would not gather it
        lm.model.unshard()
    try:
        for e in examples:
            ids = torch.tensor([e.ids[:e.prompt_length]], device=device)
            with torch.no_grad():
                gen = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=new_tokens, do_sample=False,
                                        pad_token_id=lm.pad_id, synced_gpus=synced)
            out.append({"prompt": tok.decode(e.ids[:e.prompt_length]),
                        "reference": tok.decode(e.ids[e.prompt_length:]),
                        "generated": tok.decode(gen[0, ids.shape[1]:].tolist())})
    finally:
        if synced:
            lm.model.reshard()
        lm.model.train(was)
    return out


__all__ = ["BROKEN_RISE", "SCORE", "broken_key", "completion_scores", "generations",
           "prompt_attack", "robust_key", "token_nll"]
