"""Training pieces shared by the `sft` and `dpo` stages: the LoRA adapter and the precision.

A library module, not a stage: `dpo` used to import these from the `sft` stage, so editing the SFT
stage re-ran every preference round.

    python -m components.training        # print the LoRA configs params.yaml gives sft and dpo
"""

from __future__ import annotations

from components.config import Lora


def lora_config(cfg: Lora):
    from peft import LoraConfig

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")


def trainer_precision(device) -> dict:
    """bf16 autocast everywhere we can: on CPU TRL needs use_cpu=True for it (~1.5x fp32 here)."""
    if device.type == "cuda":
        import torch
        return {"bf16": torch.cuda.is_bf16_supported()}
    return {"use_cpu": True, "bf16": True}


if __name__ == "__main__":
    from components.config import load_params

    params = load_params()
    print("sft:", lora_config(params.sft.lora))
    print("dpo:", lora_config(params.dpo.lora))
