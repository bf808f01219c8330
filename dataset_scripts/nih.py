"""Prepare NIH ChestX-ray14 (Wang et al., CVPR 2017) as a Hub-ready dataset folder.

Obtain: https://nihcc.app.box.com/v/ChestXray-NIHCC (no registration; 42 GB). Download
Data_Entry_2017_v2020.csv, train_val_list.txt, test_list.txt and images_001.tar.gz ...
images_012.tar.gz, and extract the archives into DATA_DIR (giving DATA_DIR/images/*.png, or the
Kaggle layout DATA_DIR/images_001/images/*.png). Terms: use freely, cite the paper and acknowledge
the NIH Clinical Center.

Defaults: findings prompts, frontal views (all are frontal), 512 px, official split
(test_list.txt -> test, train_val_list.txt patients hashed into train/validation).

    python dataset_scripts/nih.py --data-dir DATA_DIR --output-dir nih_prompts --num-proc 2
"""

import sys

from _run import run

if __name__ == "__main__":
    sys.exit(run("nih", ["--template", "findings", "--views", "frontal", "--resolution", "512"]))
