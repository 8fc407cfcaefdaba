"""Training recipe: DeepSpeed ZeRO-2 over cached visual features, resumable.

`train(config, resume=None, out_dir=None) -> run_dir` is the library entry point; the CLI
(`sevlm train`) and `sevlm demo` call it. `TrainRecipe` is the recipe itself.
"""

from sevlm.train.checkpoint import TrainingError, has_checkpoint
from sevlm.train.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig, load_train_config
from sevlm.train.recipe import TrainRecipe, train

__all__ = [
    "train",
    "TrainRecipe",
    "TrainConfig",
    "DataConfig",
    "OptimConfig",
    "ScheduleConfig",
    "load_train_config",
    "TrainingError",
    "has_checkpoint",
]
