import torch

torch.set_flush_denormal(True)  # freshly initialised nets run far slower on denormal floats on CPU
