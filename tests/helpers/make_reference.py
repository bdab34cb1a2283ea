"""Writes tests/data/reference_small.pt for test_model.test_stored_reference_logits.

Run once when the architecture is known to be right: `python -m helpers.make_reference` in tests/.
"""
from pathlib import Path

import torch


from helpers.reference_weights import ARCH as arch, seeded_model

model = seeded_model()
x = torch.randn(1, 3, 37, 53, generator=torch.Generator().manual_seed(7))
with torch.no_grad():
    logits = model(x)
out = Path(__file__).parents[1] / "data" / "reference_small.pt"
torch.save({"arch": arch, "input": x, "logits": logits}, out)
print(f"wrote {out} ({out.stat().st_size} bytes)")
