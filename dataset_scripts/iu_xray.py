"""Prepare the Indiana University chest X-ray collection (IU X-ray / OpenI; Demner-Fushman et al., JAMIA 2016).

Obtain: https://openi.nlm.nih.gov/faq ("NLMCXR_png.tgz" images and "NLMCXR_reports.tgz" reports; also
on academictorrents). Extract both into DATA_DIR so that DATA_DIR/NLMCXR_png/*.png and
DATA_DIR/ecgen-radiology/*.xml exist (the reports archive may also be left as DATA_DIR/NLMCXR_reports.tgz).
Licence: CC BY-NC-ND 4.0 (non-commercial, no derivatives).

Defaults: report prompts (FINDINGS + IMPRESSION, "XXXX" anonymisation tokens kept, cut at a word
boundary to 77 CLIP tokens), frontal views (t-SNE / DICOM view metadata shipped with torchxrayvision),
512 px, patient-hashed 80/10/10 split (one report = one patient). ``--on-missing skip``: the images of
the reports without FINDINGS and IMPRESSION (40 of 7,470) have no prompt text and are left out, listed
in skipped.csv with the reason (as are missing image files).

    python dataset_scripts/iu_xray.py --data-dir DATA_DIR --output-dir iu_xray_reports
"""

import sys

from _run import run

if __name__ == "__main__":
    sys.exit(run("iu_xray", ["--template", "report", "--views", "frontal", "--resolution", "512", "--on-missing", "skip"]))
