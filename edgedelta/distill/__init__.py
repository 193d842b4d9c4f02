"""Recovery by distillation: `distill(student, DistillConfig, out_dir)` (api.py).

steps.py its steps (prepare, start, train, finish) · run_folder.py checkpoints and --resume ·
teacher.py which teacher · config.py DistillConfig · schedule.py replacement schedules ·
hybrid.py replace() and the hybrid student · reconstruct.py per-group reconstruction ·
trainer.py the loop · losses.py · data.py · trainable.py · checkpoint.py · teacher_cache.py ·
distributed.py · logs.py"""
