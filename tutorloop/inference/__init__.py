"""Running the student: the generation engine and what serves it.

    engine.py      continuous-batched sampling on a slot KV cache (`generate`), the sampler, the calculator hook
    fused.py       one fused decode step for Llama-family models (`LlamaDecoder`), bit-identical to HF's
    kernels/       the C decode-attention kernel and its loader
    sampler.py     practice/evaluate samplers: the local engine or an OpenAI-compatible server
    calculator.py  safe, exact arithmetic for `<<expr=value>>` annotations
    batching.py    what `batch_size: auto` resolves to per device for the engine's rows
    chat.py        a local transformers model as a chat backend (teacher, judge), run by the engine

May import: tutorloop.errors, secrets, config, hardware (the resolved runtime), runtime (the
thread pool), data (content hashes), modeling, llm. Never components/ or flows/; never
teachers/, train/, eval/ or registry/ (they import this package, not the reverse).
"""
