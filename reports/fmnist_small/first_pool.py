"""DFHL's first round on the shipped Fashion-MNIST teacher, per student and per
``schedule.synthesis_student_bn``: the student's eval-logit spread at initialisation, how far the round
moves G (summed |ΔG|), and the teacher's class histogram of the 128 pooled images.

    PYTHONPATH=. python reports/fmnist_small/first_pool.py      # about 1.5 min on 2 CPU cores
"""

import torch

from harness.backbone.cost import Cost
from harness.backbone.method import MethodContext
from harness.config import TeacherSpec
from harness.data import get_dataset
from harness.models import create_model
from harness.teacher import load_teacher
from methods.dfhl import DFHL

torch.set_num_threads(1)
info = get_dataset("fashion-mnist")
teacher = load_teacher(TeacherSpec("cnn5", "teachers/fashion-mnist/cnn5.pt"), info)
print(f"{'student':<17} {'student BN':<18} seed  eval-logit std  |ΔG|     teacher classes of the first pool")
for student_name in ("mobilenetv2-tiny", "resnet8"):
    for mode in ("running", "batch_first_epoch"):
        for seed in (0, 1):
            torch.manual_seed(seed)
            student = create_model(student_name, in_channels=1, num_classes=10, image_size=28)
            with torch.no_grad():
                spread = student.eval()(torch.rand(64, 1, 28, 28)).std().item()
            context = MethodContext(teacher=teacher, student=student, info=info, epsilon=0.1, step_size=0.025,
                                    attack_steps=2, batch_size=128, generator_steps=10, pool_size=1000,
                                    device=torch.device("cpu"), cost=Cost(), synthesis_student_bn=mode)
            method = DFHL(DFHL.default_params("fashion-mnist"), context)
            before = [p.detach().clone() for p in method.generator.parameters()]
            method.synthesize(0)
            moved = sum((p - q).abs().sum().item() for p, q in zip(method.generator.parameters(), before))
            histogram = torch.bincount(method.pool.labels, minlength=10).tolist()
            print(f"{student_name:<17} {mode:<18} {seed:>4}  {spread:>14.2e}  {moved:>7.0f}  {histogram}")
