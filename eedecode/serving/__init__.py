"""eedecode inside serving engines.

:mod:`eedecode.serving.vllm` is a vLLM speculative-decoding proposer (``custom_class``) that drafts
with the target model's own first layers and LM head (LayerSkip-style self-speculation) or by
prompt lookup, and stops drafting where it does not pay; :mod:`eedecode.serving.export` writes a
checkpoint's first layers as a standalone draft model for vLLM's ``draft_model`` method. Nothing
here imports vLLM until vLLM loads the proposer. Usage and measurements: docs/vllm.md.
"""
