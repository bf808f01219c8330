"""Prepare your own folder of chest X-rays (a hospital export, a Kaggle set) as a Hub-ready dataset.

Layouts: (1) DATA_DIR/metadata.csv or metadata.jsonl with file_name plus text/caption and/or
label(s) columns (optional patient_id, sex, age, view, split); (2) images with sidecar captions
(case1.png + case1.txt); (3) class sub-folders DATA_DIR/<class>/*.png (DreamBooth style, use
--template class or a format string such as "a chest X-ray of {label}").

Make sure you are allowed to train on and share the images (de-identification, consent, the
data owner's terms) before pushing the result anywhere.

    python dataset_scripts/folder.py --data-dir DATA_DIR --output-dir my_prompts [--template class]
"""

import sys

from _run import run

if __name__ == "__main__":
    sys.exit(run("folder", ["--resolution", "512"]))
