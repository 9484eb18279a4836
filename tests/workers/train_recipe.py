"""Worker: run the training recipe with Hydra overrides from argv (under torchrun or plain python).

Writes nothing itself; the recipe writes RUN_DIR/summary.json (rank 0).
"""
import sys


def main(overrides: list[str]) -> None:
    from ecomvlm.recipes.models.registry import compose
    from ecomvlm.recipes.vlm_train import run

    run(compose("train", overrides))


if __name__ == "__main__":
    main(sys.argv[1:])
