"""The seed blog post's FGM and PGD, re-typed in its style: the reference that
``tests/test_seed_compat.py`` checks advnlp's ``attack()/restore()`` shim against, and the
naive baseline ``benchmarks/step_cost.py`` times advnlp against. NOT advnlp: each clones the
whole embedding matrix, perturbs it with the global-norm gradient step and restores it with
``param.data = backup``; PGD also clones every parameter gradient (``backup_grad``).

One copy, imported by both (the tests put ``benchmarks/`` on their path)."""
import torch

EMB = "word_embeddings"


class SeedFGM:
    """The blog post's FGM, verbatim in behaviour (substring match, global norm)."""

    def __init__(self, model):
        self.model, self.backup = model, {}

    def attack(self, epsilon=1.0, emb_name=EMB):
        for name, param in self.model.named_parameters():
            if param.requires_grad and emb_name in name:
                self.backup[name] = param.data.clone()
                norm = torch.norm(param.grad)
                if norm != 0 and not torch.isnan(norm):
                    param.data.add_(epsilon * param.grad / norm)

    def restore(self, emb_name=EMB):
        for name, param in self.model.named_parameters():
            if param.requires_grad and emb_name in name:
                param.data = self.backup[name]
        self.backup = {}


class SeedPGD:
    """The widely copied PGD companion of the seed's FGM (K full backward passes)."""

    def __init__(self, model):
        self.model, self.emb_backup, self.grad_backup = model, {}, {}

    def attack(self, epsilon=1.0, alpha=0.3, emb_name=EMB, is_first_attack=False):
        for name, param in self.model.named_parameters():
            if param.requires_grad and emb_name in name:
                if is_first_attack:
                    self.emb_backup[name] = param.data.clone()
                norm = torch.norm(param.grad)
                if norm != 0 and not torch.isnan(norm):
                    param.data.add_(alpha * param.grad / norm)
                    r = param.data - self.emb_backup[name]
                    if torch.norm(r) > epsilon:
                        r = epsilon * r / torch.norm(r)
                    param.data = self.emb_backup[name] + r

    def restore(self, emb_name=EMB):
        for name, param in self.model.named_parameters():
            if param.requires_grad and emb_name in name:
                param.data = self.emb_backup[name]
        self.emb_backup = {}

    def backup_grad(self):
        for name, param in self.model.named_parameters():
            if param.requires_grad and param.grad is not None:
                self.grad_backup[name] = param.grad.clone()

    def restore_grad(self):
        for name, param in self.model.named_parameters():
            if param.requires_grad and name in self.grad_backup:
                param.grad = self.grad_backup[name]
