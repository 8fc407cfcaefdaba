"""Training recipe: DeepSpeed ZeRO-2 over cached visual features, resumable.

`train(config, resume=None, out_dir=None) -> run_dir` is the library entry point; the CLI
(`sevlm train`) and `sevlm demo` call it.
"""

from sevlm.train.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig, load_train_config
from sevlm.train.loop import TrainingError, train

__all__ = [
    "train",
    "TrainConfig",
    "DataConfig",
    "OptimConfig",
    "ScheduleConfig",
    "load_train_config",
    "TrainingError",
]
