"""Test tooling: run a module under accelerate's FSDP on CPU processes (gloo), for the test suite.

accelerate 1.15 turns ``accelerate launch --use_fsdp`` into FSDP on accelerator devices only: processes on CPUs
(``ACCELERATE_USE_CPU=true``) become plain data parallelism (``MULTI_CPU``) and the FSDP plugin it built from the
launcher's settings is dropped (the trainers refuse that: see ``engine._train``). torch's FSDP2 (``fully_shard``)
itself works on CPU tensors over gloo. This launcher lifts accelerate's device gate and nothing else: the plugin,
accelerate's FSDP2 preparation (wrapping, loading the full weights into the shards), its sharded checkpoints and the
full-weight gathering of the export are accelerate's and torch's own code, as on GPUs.

    accelerate launch --use_fsdp --fsdp_version 2 ... tests/fsdp_on_cpu.py var_clip.training.train_var ARGS...
"""

from __future__ import annotations

import runpy
import sys

from accelerate import state
from accelerate.utils import DistributedType

_accelerator_state_init = state.AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # every later AcceleratorState() copies PartialState's shared state over its own: both must say FSDP
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


if __name__ == "__main__":
    state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
