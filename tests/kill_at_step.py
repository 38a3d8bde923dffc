"""Run `rlft ARGS...` and SIGKILL this very process when optimizer step K ends: a crash the
product cannot see coming (no hook in rlft; the kill comes from the test side).

    python tests/kill_at_step.py K train stage=sft run_dir=... save_steps=2 max_steps=4

The callback is added to every transformers.Trainer (TRL's trainers and rlft's subclasses
included) after the others, at on_step_end: step K's update is done, but it is neither logged
nor checkpointed, so the run dir holds what a real crash at that moment would leave.
"""

import os
import signal
import sys


def main() -> int:
    kill_step, argv = int(sys.argv[1]), sys.argv[2:]
    import transformers

    class KillAtStep(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == kill_step:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    init = transformers.Trainer.__init__

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(KillAtStep())

    transformers.Trainer.__init__ = patched_init

    from rlft.cli import main as rlft_main

    return rlft_main(argv)


if __name__ == "__main__":
    sys.exit(main())
