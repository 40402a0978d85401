"""Native kernels for the engine's decode step: decode_attention.c (decode attention over the slot
KV cache, bf16 on CPU) and attention.py, which builds it with the system C compiler at first use
and calls it through ctypes.

May import: torch only (nothing of tutorloop).
"""
