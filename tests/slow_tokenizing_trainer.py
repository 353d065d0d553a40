"""The real trainer, with each part of the token cache taking a moment longer to write: a
stand-in for a corpus of gigabytes, so a run started from the console trains while its
corpus is still being tokenized (`--trainer-module tests.slow_tokenizing_trainer`)."""

from __future__ import annotations

import sys
import time
from typing import Any

from training.contract.blas import reexec_with_openblas

PART_DELAY_S = 0.2


def main() -> int:
    reexec_with_openblas()
    from training.trainer import token_cache

    write_part = token_cache.EntryBuilder.write_part

    def slow_write_part(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(PART_DELAY_S)  # a slower tokenizer, not a wait for something
        return write_part(self, *args, **kwargs)

    token_cache.EntryBuilder.write_part = slow_write_part  # type: ignore[method-assign]
    from training.continued_pretraining import main as trainer_main

    return int(trainer_main(sys.argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
