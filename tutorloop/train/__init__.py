"""Training, thin over TRL: the LoRA adapter and its merge (lora.py), precision and batch per
device (precision.py), resumable working folders (resume.py), and the trainers the `sft` and
`preference` stages run (sft.py, preference.py).

May import: tutorloop.errors, secrets, config, data, modeling, inference (batching), runtime
(tracking's trainer callback); never components/ or flows/.
"""
