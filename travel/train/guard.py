"""The non-finite guard: steps whose gradients are not finite are skipped on the device; too many in a row roll the
run back to its last saved state with both learning rates halved (docs/METHOD.md, "Training loop")."""

from __future__ import annotations

import torch

from travel.errors import TravelError
from travel.train.step import Nets, all_finite

BAD_STEPS_BEFORE_ROLLBACK = 5  # skipped (non-finite) steps in a row before going back to the last saved state
MAX_ROLLBACKS = 3  # rollbacks, each halving both learning rates, before giving up with an error


class Guard:
    """Tallies of skipped steps, kept on the device and read at log and save steps only, so that a GPU never waits
    for the host inside a step; and the rollbacks so far with the learning-rate scale they left."""

    def __init__(self, device: torch.device, *, lr_scale: float = 1.0) -> None:
        self.device, self.lr_scale, self.rollbacks = device, lr_scale, 0
        self.reset()

    def reset(self) -> None:
        zero = torch.zeros((), device=self.device)
        self.skipped = self.streak = self.longest = zero  # since the last log; in a row; most in a row

    def record(self, bad: torch.Tensor) -> None:
        """`bad`: 1 if this step skipped an update, else 0 (a 0-dim tensor on the device)."""
        self.skipped, self.streak = self.skipped + bad, (self.streak + 1) * bad
        self.longest = torch.maximum(self.longest, self.streak)

    def read(self, nets: Nets, *, check_weights: bool) -> tuple[int, int]:
        """(bad steps in a row now, most in a row): one host-device sync, plus one when `check_weights` (at save
        steps: weights that are not finite must never be saved, so they count as BAD_STEPS_BEFORE_ROLLBACK at once).
        The caller rolls back when the second reaches BAD_STEPS_BEFORE_ROLLBACK."""
        streak, longest = (int(v) for v in torch.stack([self.streak, self.longest]).tolist())
        if check_weights and not weights_finite(nets):
            longest = BAD_STEPS_BEFORE_ROLLBACK
        return streak, longest

    def take_skipped(self) -> int:
        """Steps skipped since the last call (every rank skips the same steps: the gradients are averaged)."""
        skipped = int(self.skipped)
        self.skipped = torch.zeros((), device=self.device)
        return skipped

    def roll_back(self, step: int, good_step: int) -> float:
        """Count a rollback at `step` to the state saved at `good_step`; returns the new learning-rate scale. Raises
        after MAX_ROLLBACKS."""
        self.rollbacks += 1
        if self.rollbacks > MAX_ROLLBACKS:
            raise TravelError(
                f"training diverged at step {step}: non-finite gradients even after {MAX_ROLLBACKS} rollbacks "
                f"with lower learning rates; the last good state (step {good_step}) is kept; try lower --lr-g/--lr-d"
            )
        self.lr_scale *= 0.5
        self.reset()
        return self.lr_scale


def weights_finite(nets: Nets) -> bool:
    """Whether every weight of every network is finite (called at save steps only)."""
    modules = [nets.generator, nets.discriminator, nets.ema] + ([nets.siamese] if nets.siamese is not None else [])
    return all_finite([p for m in modules for p in m.parameters()])
