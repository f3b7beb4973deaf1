"""TRL's ``SFTTrainer`` with adversarial training: ``AdversarialSFTTrainer``.

    from advnlp import PGD
    from advnlp.integrations.trl import AdversarialSFTTrainer

    trainer = AdversarialSFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds,
                                    processing_class=tokenizer, peft_config=LoraConfig(...),
                                    adversary_factory=lambda m: PGD(m, epsilon=0.03,
                                                                    relative=True, steps=2))
    trainer.train()

The same step as :class:`advnlp.integrations.transformers.AdversarialTrainer` (the mixin),
with SFTTrainer's own ``compute_loss`` as the closure for the methods that need a loss
(FGM, PGD, FreeLB, AWP, NEFTune, ...). Gradient accumulation, packing, completion-only loss,
``average_tokens_across_devices`` and the Trainer's DDP keep working.

What differs from a plain ``SFTTrainer`` run, and why:

- SFTTrainer wraps the model itself (``peft_config``), so the adversary cannot be built
  beforehand on the final model: give ``adversary_factory`` (a function of the model the
  trainer trains), or ``adversary`` when the model is already what it will train.
- The methods that compare outputs (SMART, VAT, R3F) need logits with a graph; SFTTrainer's
  loss runs a fused LM head that builds none. Their closure is a plain forward and the loss
  SFTTrainer computes, written out: the summed next-token negative log-likelihood over the
  labelled tokens divided by ``num_items_in_batch`` (or by this batch's labelled tokens).
  Label smoothing, ``loss_type="dft"`` and ``compute_loss_func`` are not reproduced there
  (refused).
- ``compute_loss`` also books metrics (entropy, token accuracy, tokens seen); a method runs
  it several times per step, so only the first pass's are kept.
- ``adversary_mask`` (``"attention_mask"``, ``"prompt"``, a function; see the mixin) says
  which positions are perturbed. With packing (padding-free) there is no attention mask:
  every position is real.
- TRL's own ``neftune_noise_alpha`` with advnlp's :class:`~advnlp.NEFTune` is refused at
  the first step (the noise would be added twice).
- :class:`~advnlp.DiscreteAT` edits texts, which the step does not have: refused at
  construction. A method the trainer refuses that ``adversary_factory`` built is removed
  from the model again (the caller has no handle to it).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

try:
    from trl import SFTTrainer
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("advnlp.integrations.trl needs trl: pip install trl") from e

from .. import Adversary
from .transformers import AdversarialMixin, check_adversary


class AdversarialSFTTrainer(AdversarialMixin, SFTTrainer):
    """``trl.SFTTrainer`` whose training step runs an advnlp method.

    Args:
        adversary: an advnlp method built on the model the trainer trains.
        adversary_factory: ``model -> method``, called once the trainer has built its model
            (after PEFT wrapping); use it with ``peft_config``. Give one of the two.
        adversary_mask: see :class:`~advnlp.integrations.transformers.AdversarialMixin`.
        *args, **kwargs: passed to ``SFTTrainer``.
    """

    def __init__(self, *args, adversary=None, adversary_factory: Optional[Callable] = None,
                 adversary_mask=None, **kwargs):
        if adversary is not None and adversary_factory is not None:
            raise ValueError("give adversary or adversary_factory, not both")
        if adversary_factory is not None and not callable(adversary_factory):
            raise TypeError("adversary_factory must be a function model -> advnlp method")
        super().__init__(*args, adversary=adversary, adversary_mask=adversary_mask, **kwargs)
        if adversary_factory is not None:
            self.adversary = self._built(adversary_factory, adversary_mask)
        elif self.adversary is not None:
            self._check_loss(self.adversary)

    def _built(self, factory: Callable, adversary_mask) -> Adversary:
        """The factory's method, checked before it is kept. A refused one is removed from
        the model: the caller holds no handle to it, and a refusal leaves the model as it was."""
        adv = factory(self.model)
        try:
            if not isinstance(adv, Adversary) or not adv.built_on(self.model):
                raise ValueError("adversary_factory must build the method on the model it is "
                                 "given: lambda model: FGM(model)")
            check_adversary(adv, adversary_mask)
            self._check_loss(adv)
        except Exception:
            if isinstance(adv, Adversary):
                adv.remove()
            raise
        return adv

    def _check_loss(self, adv: Adversary) -> None:
        if adv.needs_logits and (self.label_smoother is not None or self.args.loss_type != "nll"
                                 or self.compute_loss_func is not None):
            raise ValueError(
                f"{type(adv).__name__} compares logits, so advnlp computes "
                "SFTTrainer's loss itself (the token-mean NLL); label smoothing, "
                "loss_type other than 'nll' and compute_loss_func are not reproduced: "
                "drop them or use a method that takes the loss (FGM, PGD, FreeLB)")

    def training_step(self, *args, **kwargs):
        if self.adversary is None:
            return super().training_step(*args, **kwargs)
        offload = getattr(self, "maybe_activation_offload_context", None) or contextlib.nullcontext()
        with offload:
            return AdversarialMixin.training_step(self, *args, **kwargs)

    def adversarial_closure(self, model: nn.Module, inputs: Dict[str, Any], num_items_in_batch):
        calls = [0]

        def once_booked(fn):
            # compute_loss books metrics and tokens seen per call; keep the first pass's only
            def run():
                tokens = getattr(self, "_total_train_tokens", None)
                booked = self._metrics["train"]
                saved = {k: list(v) for k, v in booked.items()}
                out = fn()
                if calls[0]:
                    if tokens is not None:
                        self._total_train_tokens = tokens
                    for k in list(booked):
                        if k in saved:
                            booked[k] = saved[k]
                        else:
                            del booked[k]
                calls[0] += 1
                return out
            return run

        def loss():
            with self.compute_loss_context_manager():
                return self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)

        def with_logits():
            with self.compute_loss_context_manager():
                forward = {k: v for k, v in inputs.items() if k != "labels"}
                logits = model(**forward, use_cache=False).logits
            return next_token_nll(logits, inputs["labels"], num_items_in_batch,
                                  self._token_scale(num_items_in_batch)), logits

        return once_booked(loss), with_logits

    def _token_scale(self, num_items_in_batch) -> float:
        # as SFTTrainer: num_items_in_batch counts every rank's tokens and DDP averages
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            return float(self.accelerator.num_processes)
        return 1.0


def next_token_nll(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None,
                   scale: float = 1.0) -> torch.Tensor:
    """SFTTrainer's loss from logits: the summed NLL of each labelled next token, divided by
    ``num_items_in_batch`` (else this batch's labelled tokens; at least 1), times ``scale``."""
    target = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(),
                          ignore_index=-100, reduction="sum")
    n = (target != -100).sum() if num_items_in_batch is None else num_items_in_batch
    return nll / torch.as_tensor(n, device=nll.device).clamp(min=1) * scale


__all__ = ["AdversarialSFTTrainer", "next_token_nll"]
