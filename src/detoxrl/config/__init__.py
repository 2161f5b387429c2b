"""The run configuration: typed frozen dataclasses (the only home of defaults, checks and field docs), YAML
files and ``a.b=c`` overrides, the shipped presets. Knows nothing of models, data or tensors.

Outside this package, import configs from here (``from detoxrl.config import PPOConfig``)."""

from detoxrl.config.evaluation import RTP_PROTOCOL, EvalConfig, GuardConfig, QualityConfig
from detoxrl.config.files import (
    RESUME_OVERRIDES,
    list_presets,
    load_config,
    preset_path,
    resume_config,
    save_config,
)
from detoxrl.config.policy import (
    BUILTIN_BASES,
    SHORT_WORDS,
    BuiltinBase,
    DataConfig,
    Dtype,
    EngineName,
    LoraSettings,
    PolicyConfig,
    RewardConfig,
)
from detoxrl.config.rl import GROUP_SIZE, Algorithm, PPOConfig
from detoxrl.config.sampling import SamplingConfig, check_rollout_sampling
from detoxrl.config.schema import DEVICE, DEVICES, RunConfig

__all__ = [
    "BUILTIN_BASES",
    "DEVICE",
    "DEVICES",
    "GROUP_SIZE",
    "RESUME_OVERRIDES",
    "RTP_PROTOCOL",
    "SHORT_WORDS",
    "Algorithm",
    "BuiltinBase",
    "DataConfig",
    "Dtype",
    "EngineName",
    "EvalConfig",
    "GuardConfig",
    "LoraSettings",
    "PPOConfig",
    "PolicyConfig",
    "QualityConfig",
    "RewardConfig",
    "RunConfig",
    "SamplingConfig",
    "check_rollout_sampling",
    "list_presets",
    "load_config",
    "preset_path",
    "resume_config",
    "save_config",
]
