"""The training loop's schedule and checkpointed state, without Ray: what a restarted worker resumes from."""

from __future__ import annotations

import io

import pytest
import torch

from distkd import config
from distkd.distill.loop import TrainingState
from distkd.methods.optim import SCHEDULES, RowSchedule

lr_factor = SCHEDULES["one_cycle"]


def test_learning_rate_warms_up_then_decays_over_the_rows():
    train = config.TrainConfig(epochs=2, lr=0.1)
    schedule = RowSchedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=train.lr), train, 50)
    rates = []
    for _ in range(11):
        rates.append(schedule.lr)
        schedule.step(10)
    # 100 rows: warm-up over the first 20 %, then linear decay to zero, floored at 1 % of lr
    expected = [0.001, 0.05, 0.1, 0.0875, 0.075, 0.0625, 0.05, 0.0375, 0.025, 0.0125, 0.001]
    assert rates == pytest.approx(expected)
    assert schedule.optimizer.param_groups[0]["lr"] == pytest.approx(expected[-1])  # the optimiser's own


def test_schedule_on_uneven_steps_follows_the_rows_and_ends_with_the_last_row():
    # 5 units of 20 rows over 4 workers, batches of 10 rows a worker: one worker reads two units, so an epoch
    # takes 4 steps (40, 40, 10, 10 rows), not the 3 that equal shares would (100 rows / 40)
    epoch = [40, 40, 10, 10]
    train = config.TrainConfig(epochs=3, lr=0.1)
    schedule = RowSchedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), train, rows_per_epoch=100)
    done, ends = 0, []
    for _ in range(3):
        for rows in epoch:
            assert schedule.lr == pytest.approx(0.1 * lr_factor(done / 300))
            schedule.step(rows)
            done += rows
        ends.append(schedule.lr)
    assert ends == pytest.approx([0.1 * lr_factor(1 / 3), 0.1 * lr_factor(2 / 3), 0.001])
    assert ends[1] > 0.001  # not at the floor before the last epoch ends


def state(device: str = "cpu") -> TrainingState:
    """A small model's training state, the same on every call, with an enabled gradient scaler."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = RowSchedule(optimizer, config.TrainConfig(epochs=1, lr=0.1), rows_per_epoch=100)
    return TrainingState(model, optimizer, schedule, torch.amp.GradScaler(device), torch.device(device))


def trained(s: TrainingState) -> TrainingState:
    """``s`` after one step of 30 rows, its loss scale moved off the initial 65536."""
    loss = s.model(torch.ones(4, 3, device=s.device)).square().sum()
    s.scaler.scale(loss).backward()
    s.scaler.step(s.optimizer)
    s.scaler.update(new_scale=512.0)
    s.schedule.step(30)
    return s


def test_checkpoint_restores_scale_schedule_optimiser_model_and_rng(device="cpu"):
    before = trained(state(device))
    buffer = io.BytesIO()
    torch.save(before.checkpoint(epoch=3, history=[{"epoch": 4}]), buffer)
    draws = torch.rand(3), torch.rand(3, device=device)  # what the saved RNG states draw next

    after = state(device)
    assert after.scaler.get_scale() == 65536.0
    buffer.seek(0)
    start_epoch, history = after.restore(torch.load(buffer, map_location="cpu", weights_only=True))
    assert (start_epoch, history) == (4, [{"epoch": 4}])
    assert after.scaler.get_scale() == 512.0
    assert after.schedule.done == 30 and after.optimizer.param_groups[0]["lr"] == pytest.approx(before.schedule.lr)
    assert torch.equal(after.model.weight, before.model.weight)
    momentum = after.optimizer.state[after.model.weight]["momentum_buffer"]
    assert momentum.device == after.model.weight.device
    assert torch.equal(momentum, before.optimizer.state[before.model.weight]["momentum_buffer"])
    assert torch.equal(torch.rand(3), draws[0]) and torch.equal(torch.rand(3, device=device), draws[1])


def test_on_a_gpu_the_cuda_rng_state_is_saved_and_restored(monkeypatch):
    """The CUDA branch, on a CPU machine: the calls torch makes for a CUDA device, recorded."""
    saved, restored = torch.tensor([7, 8, 9], dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda value, device: restored.append((value, device)))
    s = state()
    s.device = torch.device("cuda", 0)
    checkpoint = s.checkpoint(epoch=0, history=[])
    assert torch.equal(checkpoint["cuda_rng"], saved)
    s.restore(checkpoint)
    assert len(restored) == 1 and torch.equal(restored[0][0], saved) and restored[0][1] == torch.device("cuda", 0)
