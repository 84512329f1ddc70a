"""`python -m reference_llm.train --config FILE [section.key=value ...] [--resume]`: pretraining."""

import sys

from reference_llm.cli import run_main
from reference_llm.train.pretrain import main

sys.exit(run_main(main))
