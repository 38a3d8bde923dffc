"""Run `rlft ARGS...` and send this very process a signal at optimizer step K: a crash or a
preemption the product cannot see coming (no hook in rlft; the signal comes from the test side).

    python tests/kill_at_step.py K train stage=sft run_dir=... save_steps=2 max_steps=4
    python tests/kill_at_step.py K --signal TERM train ...     # or INT (Ctrl-C)

SIGKILL (the default) comes when step K ends (on_step_end): step K's update is done, but it is
neither logged nor checkpointed, so the run dir holds what a real crash at that moment would leave.
TERM and INT come when step K begins (on_step_begin), i.e. while it runs, as a scheduler's signal
would: rlft is expected to finish step K, checkpoint it and exit (143 / 130).

The callback is added to every transformers.Trainer (TRL's trainers and rlft's subclasses
included) when it is built, after the ones it is given.
"""

import os
import signal
import sys


def main() -> int:
    kill_step, argv = int(sys.argv[1]), sys.argv[2:]
    sig = signal.SIGKILL
    if argv[:1] == ["--signal"]:
        sig, argv = signal.Signals["SIG" + argv[1]], argv[2:]
    import transformers

    class SignalAtStep(transformers.TrainerCallback):
        sent = False

        def fire(self, state, step):
            if state.global_step == step and not self.sent:
                self.sent = True
                sys.stdout.flush()
                os.kill(os.getpid(), sig)

        def on_step_begin(self, args, state, control, **kwargs):
            if sig != signal.SIGKILL:
                self.fire(state, kill_step - 1)  # global_step counts the steps done: K - 1 while K runs

        def on_step_end(self, args, state, control, **kwargs):
            if sig == signal.SIGKILL:
                self.fire(state, kill_step)

    init = transformers.Trainer.__init__

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(SignalAtStep())

    transformers.Trainer.__init__ = patched_init

    from rlft.cli import main as rlft_main

    return rlft_main(argv)


if __name__ == "__main__":
    sys.exit(main())
