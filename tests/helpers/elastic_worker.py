"""A worker for torchrun that makes a restarted group meet the failed group's keys: it joins the
process group through `cgnet.engine.distributed.init_distributed`, and

- on the first start, rank 1 exits with status 1 once both ranks have joined and reduced, so the
  agent restarts the group;
- on the restart, rank 0 joins 3 s late, so rank 1 looks up rank 0's address before rank 0 has
  written it: in a store shared with the first start it finds the dead rank 0's address.

Prints `start S rank R: sum X` after each all-reduce."""
import os
import time

import torch
import torch.distributed as dist

from cgnet.engine.distributed import init_distributed

start, rank = int(os.environ["TORCHELASTIC_RESTART_COUNT"]), int(os.environ["RANK"])
if start == 1 and rank == 0:
    time.sleep(3)
init_distributed("cpu")
total = torch.ones(1)
dist.all_reduce(total)
print(f"start {start} rank {rank}: sum {total.item():g}", flush=True)
dist.barrier()
if start == 0 and rank == 1:
    os._exit(1)
dist.destroy_process_group()
