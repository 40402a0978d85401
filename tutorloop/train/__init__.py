"""Training, thin over TRL: the LoRA adapter and its merge (lora.py), precision per device
(precision.py), what `batch_size: auto` resolves to for training (batching.py), resumable working
folders (resume.py), and the trainers the `sft` and `preference` stages run (sft.py,
preference.py), on the stage's resolved runtime (tutorloop/hardware.py).

May import: tutorloop.errors, secrets, config, hardware, data, modeling, runtime (tracking's
trainer callback); never inference/ (training does not decode), components/ or flows/.
"""
