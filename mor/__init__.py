"""MoR Lens: a Mixture-of-Recursions language model you can look inside.

    import mor
    model, tokenizer = mor.load("mor-ec-r3")      # a folder under checkpoints/, or any path
    out = model(tokenizer("Hello", return_tensors="pt").input_ids)
    out.depths, out.router_scores                 # recursions per token, router scores per step
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .model.cache import MoRCache
from .model.configuration import MoRConfig
from .model.loading import CheckpointError, list_checkpoints, load, resolve_checkpoint, save_checkpoint
from .model.modeling import MoRCausalLMOutput, MoRForCausalLM, MoRModel

AutoConfig.register("mor", MoRConfig, exist_ok=True)
AutoModelForCausalLM.register(MoRConfig, MoRForCausalLM, exist_ok=True)

__version__ = "0.1.0"
__all__ = [
    "CheckpointError", "MoRCache", "MoRCausalLMOutput", "MoRConfig", "MoRForCausalLM", "MoRModel",
    "list_checkpoints", "load", "resolve_checkpoint", "save_checkpoint",
]
