"""Hugging Face ``Trainer`` with adversarial training: ``AdversarialTrainer``.

    from advnlp import PGD
    from advnlp.integrations.transformers import AdversarialTrainer

    trainer = AdversarialTrainer(model=model, args=args, train_dataset=ds,
                                 adversary=PGD(model, epsilon=1.0, alpha=0.3, steps=3))
    trainer.train()

Only ``training_step`` changes: the Trainer's own ``compute_loss`` becomes the
closure and ``accelerator.backward`` the ``backward_fn``, so the Trainer's AMP,
gradient accumulation (including its loss normalisation), gradient
checkpointing and DDP keep working. The mean clean and adversarial losses since
the last log are logged as ``clean_loss`` and ``adv_loss``. ``adversary_mask=`` says
which positions may be perturbed (``"attention_mask"`` for causal LMs whose embedding has no
``padding_idx``, ``"prompt"`` for the instruction only). The step lives in
:class:`AdversarialMixin`, which any Trainer subclass can take (TRL's ``SFTTrainer``:
:mod:`advnlp.integrations.trl`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

try:
    import transformers
    from transformers import Trainer
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "advnlp.integrations.transformers needs transformers: pip install 'advnlp[hf]'"
    ) from e

from packaging.version import Version

MIN_TRANSFORMERS = "5.0"

# The Trainer's loss normalisation (gradient accumulation, DDP) changed within 4.x; the
# step below mirrors transformers 5. Under 4.46 it was measured to divide twice.
if Version(transformers.__version__).release < Version(MIN_TRANSFORMERS).release:
    raise ImportError(
        f"advnlp.integrations.transformers needs transformers>={MIN_TRANSFORMERS}"
        f" (found {transformers.__version__}): pip install -U 'advnlp[hf]'. The rest of advnlp, "
        "including advnlp train's default loop, works with transformers 4.46 and later."
    )

from .. import Adversary, DiscreteAT, backward_step, split_output  # noqa: E402 (after the version check)

MASKS = ("attention_mask", "prompt")


def check_adversary(adversary, adversary_mask=None) -> None:
    """Refuse what a Trainer's step cannot run, before the trainer keeps the method."""
    if not isinstance(adversary, Adversary):
        raise TypeError("adversary must be an advnlp method such as FGM(model)")
    if isinstance(adversary, DiscreteAT):
        raise ValueError(
            "DiscreteAT edits the texts of each batch: its backward takes the texts and a "
            "closure(batch, labels), while a Trainer's step has only token ids, so it would "
            "fail at the first step. Use DiscreteAT in your own loop, or here an embedding "
            "method (FGM, PGD, FreeLB) or texts from advnlp.attacks added to the dataset")
    if adversary_mask is not None and not hasattr(adversary, "_hook"):
        raise ValueError(f"adversary_mask: {type(adversary).__name__} perturbs weights, not "
                         "token positions; drop adversary_mask")


class AdversarialMixin:
    """The adversarial training step, for ``transformers.Trainer`` and its subclasses
    (``AdversarialTrainer``; TRL's ``SFTTrainer`` in :mod:`advnlp.integrations.trl`).

    Args:
        adversary: an advnlp method built on the same model (e.g. ``FGM(model)``,
            ``AWP(model)``). ``None`` trains exactly like the Trainer. SMART, VAT and R3F
            get the model's own loss (from ``labels`` in the batch) as their task loss and
            its logits for the divergence. DiscreteAT, which edits the texts, is refused
            (the step has token ids only).
        adversary_mask: which positions the embedding methods may perturb: ``None``
            (default: every position that is not the embedding's ``padding_idx``),
            ``"attention_mask"`` (the batch's; for models whose embedding has no
            ``padding_idx``, as most causal LMs), ``"prompt"`` (the real positions whose
            label is -100: perturb the instruction, train on the completion; Xhonneux et
            al. 2024), or a function ``inputs -> (batch, length) mask``.
        *args, **kwargs: passed to the Trainer.

    Subclasses change how a pass is run by overriding :meth:`adversarial_closure`, which
    returns the step's two closures ``(loss, output)``.
    """

    def __init__(self, *args, adversary: Optional[Adversary] = None, adversary_mask=None,
                 **kwargs):
        if adversary_mask is not None and not callable(adversary_mask) \
                and adversary_mask not in MASKS:
            raise ValueError(f"adversary_mask takes None, {', '.join(map(repr, MASKS))} or a "
                             f"function inputs -> mask, got {adversary_mask!r}")
        if adversary is not None:
            check_adversary(adversary, adversary_mask)
        super().__init__(*args, **kwargs)
        if adversary is not None and not adversary.built_on(self.model):
            raise ValueError(
                "the adversary was built on a different model than the Trainer's; "
                "build it with the same model object: FGM(model)"
            )
        self.adversary = adversary
        self.adversary_mask = adversary_mask
        self._adv_sums = {"clean_loss": 0.0, "adv_loss": 0.0, "n": 0, "n_adv": 0}

    def positions(self, inputs: Dict[str, Any]) -> Optional[torch.Tensor]:
        """The mask ``adversary_mask`` gives for this batch (None: the default)."""
        spec = self.adversary_mask
        if spec is None:
            return None
        if callable(spec):
            return spec(inputs)
        ids = inputs["input_ids"]
        real = inputs.get("attention_mask")
        real = torch.ones_like(ids, dtype=torch.bool) if real is None else real.bool()
        if spec == "attention_mask":
            return real
        if "labels" not in inputs:
            raise ValueError("adversary_mask='prompt' needs labels in the batch (-100 on the "
                             "prompt)")
        return real & (inputs["labels"] == -100)

    def adversarial_closure(self, model: nn.Module, inputs: Dict[str, Any], num_items_in_batch):
        """The closures of one step, ``(loss, output)``, both the Trainer's own
        ``compute_loss``: ``output`` returns ``(loss, logits)`` for the methods that compare
        outputs (SMART, VAT, R3F); :func:`advnlp.backward_step` calls the one the method takes."""
        def trainer_loss():
            with self.compute_loss_context_manager():
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True,
                                                  num_items_in_batch=num_items_in_batch)
            return (loss.mean() if self.args.n_gpu > 1 else loss), outputs

        def output():
            # The Trainer's loss (scaled, smoothed...) with the output's logits; a tuple output
            # (return_dict=False) starts with its own loss, which split_output skips.
            loss, outputs = trainer_loss()
            return loss, split_output(outputs, check_loss=False)[1]

        return (lambda: trainer_loss()[0]), output

    def training_step(self, model: nn.Module, inputs: Dict[str, Any],
                      num_items_in_batch=None) -> torch.Tensor:
        if self.adversary is None:
            return super().training_step(model, inputs, num_items_in_batch)
        if isinstance(model, nn.parallel.DistributedDataParallel):
            self.adversary.model = model  # so every pass but the last runs in no_sync()
        model.train()
        inputs = self._prepare_inputs(inputs)
        # The Trainer divides by the accumulation steps unless the loss was already
        # normalised by num_items_in_batch (or by a custom compute_loss_func).
        scaled_by_trainer = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled_by_trainer is None:
            scaled_by_trainer = (
                getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None
            ) or getattr(self, "compute_loss_func", None) is not None
        steps = getattr(self, "current_gradient_accumulation_steps",
                        self.args.gradient_accumulation_steps)
        divisor = 1 if scaled_by_trainer else steps

        def backward_fn(loss):
            self.accelerator.backward(loss / divisor if divisor != 1 else loss)

        loss, output = self.adversarial_closure(model, inputs, num_items_in_batch)
        clean = backward_step(self.adversary, loss, output, backward_fn,
                              mask=self.positions(inputs))
        sums = self._adv_sums
        sums["clean_loss"] += float(clean)
        if self.adversary.last_adv_loss is not None:  # None: a skipped (non-finite) step
            sums["adv_loss"] += float(self.adversary.last_adv_loss)
            sums["n_adv"] += 1
        sums["n"] += 1
        return clean / divisor

    def log(self, logs: Dict[str, float], *args, **kwargs) -> None:
        n = self._adv_sums["n"]
        if n and "loss" in logs:
            logs["clean_loss"] = self._adv_sums["clean_loss"] / n
            if self._adv_sums["n_adv"]:
                logs["adv_loss"] = self._adv_sums["adv_loss"] / self._adv_sums["n_adv"]
            self._adv_sums = {"clean_loss": 0.0, "adv_loss": 0.0, "n": 0, "n_adv": 0}
        super().log(logs, *args, **kwargs)


class AdversarialTrainer(AdversarialMixin, Trainer):
    """A ``transformers.Trainer`` whose training step runs ``adversary.backward``.

    Args: ``adversary``, ``adversary_mask`` (see :class:`AdversarialMixin`); the rest is
    the Trainer's.
    """
