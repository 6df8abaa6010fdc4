"""The shared test data of tests and benchmarks: `shared/datasets` beside the checkout, or `DOCENT_DATASETS`."""

import os
from pathlib import Path

DATASETS = Path(os.environ.get("DOCENT_DATASETS", Path(__file__).resolve().parents[3] / "shared" / "datasets"))
SQUAD_FILE = Path("squad") / "squad-v1.1-dev-even.json"  # inside a datasets directory
SQUAD = DATASETS / SQUAD_FILE
