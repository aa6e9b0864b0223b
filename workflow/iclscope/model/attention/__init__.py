"""The attention paths of the hook layer (iclscope.model.capture), one module per attention family.

* `eager`: the one eager attention and its pieces (scores, masks, sinks, GQA), in float32: what
  reads compute and what edits change.
* `interface`: the function registered in transformers' AttentionInterface as "iclscope", for
  the architectures that call one (Llama, GPT-2, Gemma, Qwen, …).
* `adapters`: the score/softmax step of the architectures that compute attention inline (GPT-J,
  CodeGen, GPT-Neo, Falcon, Bloom, MPT, XGLM), swapped on each attention module by `install_adapters`.

Both paths hand the active Recorder's reads to `Recorder.observe` and its edit to
`eager.eager_attention`, so every method sees the same thing whatever the architecture.
Nothing is imported here: `capture` imports `eager`, and the paths import `capture`.
"""
