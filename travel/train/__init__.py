"""Training: `fit` (travel.train.loop) runs the loop; step.py holds the one training step, guard.py the non-finite
guard and rollback, styles.py self-conditioning, run.py the run folder's state, distributed.py the process group."""

from travel.train.loop import FitResult, fit
from travel.train.run import resume_config

__all__ = ["FitResult", "fit", "resume_config"]
