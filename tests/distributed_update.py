"""Helper of tests/test_distributed.py, run under torchrun: one sharded policy update on a saved batch.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_update.py \
        SUITE.yaml POLICY_DIR BATCH.pt SEED OUT.pt

Every rank loads the suite's first algorithm sharded (rlbench.distributed), takes the whole saved
batch (as `Dist.gather_batch` leaves it), seeds the minibatch order with SEED and runs the loop's
own `_update_policy`; rank 0 saves the statistics, the full parameters after the update, each
rank's static bytes of the policy, and the sharded reference's log-probs of the batch.
"""

import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from rlbench.catalog import resolve_probe
from rlbench.config import load_suite
from rlbench.distributed import Dist
from rlbench.measure.static import role_static_bytes
from rlbench.train import Run


def main(suite_path: str, policy_dir: str, batch_path: str, seed: str, out_path: str) -> None:
    torch.set_num_threads(1)
    suite = load_suite(suite_path)
    dist = Dist.from_env(suite.distributed)
    run = Run.build(suite, suite.algorithms[0], 0, Path(policy_dir), None, resolve_probe("cpu", 10.0, "fast"), dist=dist)
    batch = torch.load(batch_path, weights_only=False)
    with torch.no_grad():  # the sharded frozen reference on the whole batch, then whether its root resharded
        ref_logprobs = run.reference_logprobs(batch.rollout)
    ref_resharded = all(hasattr(p, "to_local") for p in run.reference.parameters())
    torch.manual_seed(int(seed))
    stats = run._update_policy(batch)
    params = get_model_state_dict(run.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    static = dist._all_gather_objects(role_static_bytes(run.policy, run.optimizer))
    if dist.rank == 0:
        torch.save({"stats": stats, "params": params, "static": static, "ref_logprobs": ref_logprobs,
                    "ref_resharded": ref_resharded}, out_path)
    dist.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
