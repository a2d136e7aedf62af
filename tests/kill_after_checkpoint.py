"""
Run a training script and kill it with SIGKILL right after it wrote a given checkpoint, as a crash would (used by
tests/test_training_runs.py, not collected by pytest).

Usage: python tests/kill_after_checkpoint.py STEP scripts/train_stageN.py [script arguments...]
"""

import os
import runpy
import signal
import sys

import transformers


class KillAfterCheckpoint(transformers.TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    step, script, *script_args = sys.argv[1:]
    trainer_init = transformers.Trainer.__init__

    def init_with_kill(self, *args, **kwargs):
        trainer_init(self, *args, **kwargs)
        self.add_callback(KillAfterCheckpoint(int(step)))

    transformers.Trainer.__init__ = init_with_kill
    sys.argv = [script, *script_args]
    runpy.run_path(script, run_name="__main__")
