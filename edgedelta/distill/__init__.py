"""Recovery by distillation: `distill(student, DistillConfig, out_dir)` (api.py).

config.py DistillConfig · schedule.py replacement schedules · hybrid.py replace() and the
hybrid student · reconstruct.py per-group reconstruction · trainer.py the loop ·
losses.py · data.py · trainable.py · checkpoint.py · teacher_cache.py · distributed.py · logs.py"""
