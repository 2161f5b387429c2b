"""The run configuration: typed frozen dataclasses (the only home of defaults and checks), YAML files and
``a.b=c`` overrides, the shipped presets. Knows nothing of models, data or tensors."""

from detoxrl.config.files import list_presets, load_config, preset_path, save_config
from detoxrl.config.schema import (
    DataConfig,
    EvalConfig,
    GuardConfig,
    LoraSettings,
    PolicyConfig,
    PPOConfig,
    QualityConfig,
    RewardConfig,
    RunConfig,
    SamplingConfig,
)

__all__ = [
    "DataConfig", "EvalConfig", "GuardConfig", "LoraSettings", "PPOConfig", "PolicyConfig", "QualityConfig",
    "RewardConfig", "RunConfig", "SamplingConfig",
    "list_presets", "load_config", "preset_path", "save_config",
]  # fmt: skip
