"""The model: config, the model file, the KV cache, depth policy, sampler, FLOPs, checkpoints and cards.

`configuration` (MoRConfig), `modeling` (MoRForCausalLM, read top to bottom, a transformers
`GenerationMixin`), `cache` (MoRCache, a transformers `Cache`), `policy` (DepthPolicy: which tokens
take each recursion step, for the model and the engine alike), `sampling` (pick_next: the next-token
choice the engine shares with `generate`), `flops` (closed-form compute counts), `loading` (mor.load,
safetensors only), `card` (README.md of a checkpoint folder).
"""
