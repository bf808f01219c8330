"""Prepare the paediatric pneumonia chest X-rays (Kermany et al., Cell 2018).

Obtain: https://data.mendeley.com/datasets/rscbjbr9sj/2 (CC BY 4.0) or Kaggle
"paultimothymooney/chest-xray-pneumonia". Unzip into DATA_DIR so that
DATA_DIR/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg exist.

Defaults: findings prompts ("... with Pneumonia" / "... with No Finding"), 512 px, the official
train/val/test folders as splits (note: the published val/test folders are not guaranteed
patient-disjoint from train; pass --splits hash for a patient-disjoint split).

    python dataset_scripts/pneumonia.py --data-dir DATA_DIR --output-dir pneumonia_prompts
"""

import sys

from _run import run

if __name__ == "__main__":
    sys.exit(run("pneumonia", ["--template", "findings", "--resolution", "512"]))
