"""The model layer: a Hugging Face LLaMA-family model run range of layers by range of layers.

The runner (one forward over any contiguous range of decoder layers, over eedecode's own KV
cache), the cache, packed weights, the layer operations, what eedecode can reproduce of a model,
loading (folders, GGUF files, the demo models, synthetic models), the exit head's per-layer
statistics and exit criteria, and the cost model of a step. Everything above it (the engine,
drafting, the modes and the tools) runs the model through this layer.
"""
