"""Prepare MIMIC-CXR-JPG 2.x (Johnson et al. 2019) as a Hub-ready dataset folder.

Obtain: https://physionet.org/content/mimic-cxr-jpg/ - requires a credentialed PhysioNet account,
CITI "Data or Specimens Only Research" training and signing the PhysioNet Credentialed Health Data
Use Agreement 1.5.0. Download mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz and files/ into
DATA_DIR (DATA_DIR/files/p10/p10000032/s50414267/*.jpg). For report prompts also place the MIMIC-CXR
reports (files/pXX/pID/sID.txt, from mimic-cxr-reports.zip) in DATA_DIR or DATA_DIR/mimic-cxr-reports/.

Defaults: findings prompts, U-Ones, frontal views (PA/AP), 512 px, the official split file.
377k images: use --num-proc, and the streaming API (hf_cxr_diffusion.data.preparation.prepare_iterable)
for on-the-fly use. NEVER publish the result: the agreement forbids sharing the data.

    python dataset_scripts/mimic.py --data-dir DATA_DIR --output-dir mimic_prompts --num-proc 8
"""

import sys

from _run import run

if __name__ == "__main__":
    sys.exit(run("mimic", ["--template", "findings", "--uncertain", "ones", "--views", "frontal", "--resolution", "512"]))
