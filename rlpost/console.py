"""Console hygiene for rlpost's entry points (``rlpost`` CLI, benchmarks): what a user reads is rlpost's stage lines,
one progress bar per stage and the key metrics, not third-party deprecation noise. Imports nothing heavy, so it can
run before transformers is imported (some of its warnings are raised at import time).
"""

from __future__ import annotations

import os

__all__ = ["quiet_third_party", "quiet_training_imports"]

# Warnings from libraries rlpost drives, about calls rlpost makes (deprecations inside transformers/TRL/torch/...):
# the user cannot act on them, and on a tiny run they outnumber the lines that matter. `--verbose` keeps them.
_QUIET_MODULES = r"(transformers|trl|torch|accelerate|peft|datasets|diffusers|huggingface_hub|wandb|deepspeed)(\.|$)"


def quiet_third_party() -> None:
    """Hide third-party deprecation / future warnings, library info logs and dataset-preparation progress bars in
    this process (errors, third-party UserWarnings and rlpost's own warnings stay)."""
    import logging
    import warnings

    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_QUIET_MODULES)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    for name in ("transformers", "trl", "accelerate", "datasets", "peft", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # DeepSpeed resets its logger's level when it creates it (at import); a filter survives that. Its import-time
    # "Setting accelerator to CPU" warning is what every CPU run prints.
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.ERROR)


def quiet_training_imports() -> None:
    """Import what training imports, with the banners it prints at import time (transformers' "[INFO] Running in
    WANDB offline mode") and its weight-loading bars turned off."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import transformers.integrations.integration_utils  # noqa: F401
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()  # dataset.map bars of TRL's preprocessing; the training bar stays
