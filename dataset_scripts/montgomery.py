"""Prepare the Montgomery County TB chest X-ray set (Jaeger et al., QIMS 2014).

Obtain: https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets
("NLM-MontgomeryCXRSet.zip", public). Unzip into DATA_DIR so that DATA_DIR/MontgomerySet/CXR_png/
and DATA_DIR/MontgomerySet/ClinicalReadings/ exist. Cite Jaeger et al. 2014. The Shenzhen set
(CHNCXR_*.png with the same layout) works with --corpus montgomery as well.

Defaults: SeLoRA-style prompts "age:{age}, gender:{sex}, findings:{report}" (the clinical reading),
512 px, patient-hashed 80 % train / 20 % test, no validation split.

    python dataset_scripts/montgomery.py --data-dir DATA_DIR --output-dir montgomery_prompts
"""

import sys

from _run import run

if __name__ == "__main__":
    sys.exit(run("montgomery", ["--resolution", "512", "--split-fractions", "0.8,0,0.2"]))
