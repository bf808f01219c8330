"""Prepare CheXpert (Irvin et al., AAAI 2019) as a Hub-ready dataset folder.

Obtain: register at https://stanfordmlgroup.github.io/competitions/chexpert/ and accept the
Stanford University School of Medicine CheXpert Dataset Research Use Agreement (research,
non-commercial use; no redistribution). Download "CheXpert-v1.0-small" (11 GB) or the full
"CheXpert-v1.0" and unzip it so that DATA_DIR/CheXpert-v1.0-small/train.csv exists.

Defaults: findings prompts ("Chest X-ray of a subject with ..."), U-Ones, frontal views, 512 px,
official split (valid.csv -> test; train.csv patients hashed into train/validation).

    python dataset_scripts/chexpert.py --data-dir DATA_DIR --output-dir chexpert_prompts [--num-proc 2]

Keep the result private: the agreement forbids sharing the images.
"""

import sys

from _run import run

if __name__ == "__main__":
    sys.exit(run("chexpert", ["--template", "findings", "--uncertain", "ones", "--views", "frontal", "--resolution", "512"]))
