"""Set a checkpoint's context window (max_position_embeddings) to the sequence length it was
trained on, read from its training.json. Runs made before `mor train` did this itself had the
preset's 1024 in their config although they only ever saw 256 positions.

    python scripts/set_context.py checkpoints/recursive-r3 checkpoints/mor-tc-r3
"""

import argparse
import json
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("folders", nargs="+", type=Path, help="checkpoint folders to fix in place")
for folder in parser.parse_args().folders:
    seq_len = json.loads((folder / "training.json").read_text())["arguments"]["seq_len"]
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = seq_len
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    print(f"{folder}: max_position_embeddings = {seq_len}")
