"""Pretraining: configs, the loop (one machine or torchrun), optimizer and schedule, checkpoints."""

from .config import ConfigError, RunConfig, load_config
from .loop import NonFiniteLossError, TrainResult, train

__all__ = ["ConfigError", "NonFiniteLossError", "RunConfig", "TrainResult", "load_config", "train"]
