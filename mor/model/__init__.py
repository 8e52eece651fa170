"""The model: config, the model file, the KV cache, FLOPs, checkpoint loading/saving and cards.

`configuration` (MoRConfig), `modeling` (MoRForCausalLM, read top to bottom), `cache` (MoRCache),
`flops` (closed-form compute counts), `loading` (mor.load, safetensors only), `card` (README.md of
a checkpoint folder).
"""
