import os
import sys

import torch

# tests import the lesson's verbatim code (lesson_original.py) from this folder
sys.path.insert(0, os.path.dirname(__file__))

# Without a GPU the Triton kernels run in Triton's CPU interpreter; it is chosen when the kernels
# are defined, so before any test imports dp_fast.triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
