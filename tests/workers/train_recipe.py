"""Worker: run the training recipe with Hydra overrides from argv (under torchrun or plain python).

``--kill-after-step N`` (first argument) adds a test-only callback that SIGKILLs this process tree right after step
N, like a scheduler's kill -9 (no cleanup, no final checkpoint). Writes nothing itself; the recipe writes
RUN_DIR/summary.json (rank 0).
"""
import os
import signal
import sys


def main(argv: list[str]) -> None:
    import lightning.pytorch as pl

    from ecomvlm.recipes.config import load
    from ecomvlm.recipes.vlm_train import run

    callbacks = []
    if argv and argv[0] == "--kill-after-step":
        kill_at, argv = int(argv[1]), argv[2:]

        class KillAfter(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if pl_module.step == kill_at:
                    import psutil

                    sys.stdout.flush()
                    for child in psutil.Process().children(recursive=True):  # e.g. the checkpoint writer's helper
                        child.kill()
                    os.kill(os.getpid(), signal.SIGKILL)

        callbacks.append(KillAfter())
    run(load("train", argv), callbacks=callbacks)


if __name__ == "__main__":
    main(sys.argv[1:])
