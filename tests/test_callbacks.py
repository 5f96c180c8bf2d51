"""LastCheckpoint: when it writes, and that a weight average never replaces the weights a run
resumes from."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from neurobridge.training.callbacks import EMAWeights, LastCheckpoint


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Recording(LastCheckpoint):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.saved_at: list[int] = []

    def _save(self, trainer) -> None:
        super()._save(trainer)
        self.saved_at.append(trainer.global_step)


def _fit(tmp_path, callbacks, **trainer_kw):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(7, 4), torch.randn(7, 1))
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks, **trainer_kw)
    trainer.fit(_Tiny(), DataLoader(data, batch_size=1))
    return trainer


@pytest.mark.parametrize("stop", [{"max_steps": 7}, {"max_epochs": 1}])
def test_saves_every_n_steps_and_when_training_stops(tmp_path, stop):
    ckpt = _Recording(every_n_train_steps=3)
    _fit(tmp_path, [ckpt], **stop)
    assert ckpt.saved_at == [3, 6, 7]
    assert torch.load(ckpt.last_path, weights_only=True)["global_step"] == 7


@pytest.mark.parametrize("stop", [{"max_steps": 7}, {"max_epochs": 1}])
def test_with_a_weight_average_the_checkpoint_keeps_the_current_weights(tmp_path, stop):
    ckpt = LastCheckpoint(every_n_train_steps=100)
    trainer = _fit(tmp_path, [EMAWeights(decay=0.5), ckpt], **stop)
    saved = torch.load(ckpt.last_path, weights_only=True)
    assert saved["global_step"] == 7
    current = saved["current_model_state"]
    # the state dict holds the average, current_model_state the trained weights
    assert not torch.equal(current["layer.weight"], saved["state_dict"]["layer.weight"])
    assert trainer.global_step == 7
