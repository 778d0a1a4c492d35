import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["HARNESS_PLUGINS"] = "tests.toy_method"

from tests.e2e import teacher_checkpoint  # noqa: E402,F401  (module fixture for the end-to-end tests)
