"""The documented Lightning pattern: manual optimization, adv.backward with
backward_fn=self.manual_backward."""
import copy

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from advnlp import FGM  # noqa: E402
from tinymodels import MeanPoolClassifier, batch  # noqa: E402

ce = nn.CrossEntropyLoss()


class AdversarialModule(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.automatic_optimization = False  # advnlp runs the backward passes
        self.adv = FGM(model, epsilon=0.5)

    def training_step(self, batch, batch_idx):
        ids, y = batch
        opt = self.optimizers()
        loss = self.adv.backward(lambda: ce(self.model(ids), y), backward_fn=self.manual_backward)
        opt.step()
        opt.zero_grad()
        self.log("train_loss", loss)
        self.log("adv_loss", self.adv.last_adv_loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_lightning_manual_optimization_matches_plain_loop(tmp_path):
    torch.manual_seed(0)
    model = MeanPoolClassifier()
    ref = copy.deepcopy(model)
    data = [batch(n=4, seed=s) for s in range(3)]
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    adv = FGM(ref, epsilon=0.5)
    for ids, y in data:
        adv.backward(lambda: ce(ref(ids), y))
        opt.step()
        opt.zero_grad()

    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path))
    loader = torch.utils.data.DataLoader(data, batch_size=None)  # the batches as they are
    trainer.fit(AdversarialModule(model), train_dataloaders=loader)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
