"""Where the bundled model pair lives (torch-free, so clients and the demo can find its tokenizer)."""

import os
from pathlib import Path

MODELS_DIR = Path(os.environ.get("ADASPEC_MODELS_DIR", Path(__file__).resolve().parents[2] / "models"))
BUNDLED_TARGET = MODELS_DIR / "tiny-target"
BUNDLED_DRAFT = MODELS_DIR / "tiny-draft"
