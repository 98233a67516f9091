"""`emo init`: a commented study template that parses as written (tested), for users to edit."""

from __future__ import annotations

from pathlib import Path

from emo.errors import EmoError
from emo.io import write_text_atomic

STUDY_TEMPLATE = """\
# emo study: run it with `emo run study.yaml`; re-running skips stages whose inputs did not change,
# `emo run study.yaml --from train` redoes train and every stage after it.
# Relative paths are relative to this file. Unknown keys are errors (check the spelling).

out: emo-study                  # everything the run writes goes here
spatial: null                   # spot-level study instead (spatial transcriptomics sections); `emo init --spatial`

slides:
  paths:                        # slide files or globs (.svs .ndpi .mrxs .tif; plain .jpg/.png need mpp)
    - slides/*.svs
  mpp: null                     # level-0 µm/px, only for slides without scale metadata
  roi: null                     # folder of <slide_id>.geojson regions to keep (null: whole tissue)
  roi_classes: null             # QuPath classes that make the ROI, e.g. [Tumor, Stroma] (null: all but Ignore*)
  tile_size_um: 271             # tile edge in µm (the paper: 598 px at 0.453 µm/px)
  target_mpp: 0.453             # tiles are resampled to this µm/px
  min_tissue: 0.5               # drop tiles with less tissue than this fraction
  normalize: true               # Macenko stain normalisation
  stain_reference: null         # reference image or name; null: emo's default
  workers: 1                    # slides tiled in parallel

expression:
  matrices:                     # normalised expression (genes × samples, log scale), one per cohort
    - expression/cohort_log2fpkm.tsv.gz
  counts_matrices: []           # raw read counts, normalised by emo
  samples: expression/samples.tsv   # sample_id, patient_id, cohort, slide_id (+ clinical columns)
  targets: null                 # an already prepared targets.h5ad instead of the above
  reference_cohort: null        # cohort other cohorts' batch offsets are removed against
  external_cohorts: []          # cohorts kept out of training, for external validation
  min_variance: 0.01            # drop genes varying less than this
  seed: 0                       # patient-level train/tune/validation/test split
  stratify: null                # sample-sheet column the split is balanced on (e.g. er_status)
  fractions: null               # [train, tune, validation, test] shares of patients; null: the paper's
                                #   [0.563, 0.14, 0.123, 0.174]

features:
  backbone: efficientnet_lite0  # `emo models` lists the registry
  weights: default
  batch_size: 64
  device: null                  # null: cuda when available, else cpu
  workers: 2                    # tile-reading processes

training:
  protocol: features            # features: one shared backbone pass + multi-output head; paper: per-gene CNNs
  head: ridge                   # head for protocol: features
  genes: null                   # panel names and/or genes, e.g. "pam50,ESR1"; null: all kept genes
  seed: 0

prediction:
  genes: null                   # genes drawn as heatmaps and written to GeoJSON (every gene is always
                                #   predicted into predictions/spatial/ and average.h5ad); null: none
  panel: null                   # a panel drawn the same way, e.g. pam50

evaluation:
  splits: [validation, test]    # each evaluated into evaluate/<split>/ (test also gets ρ concordance
                                #   with validation)
  thresholds: {}                # e.g. {r2_min: 0.2, fdr_max: 0.001, alpha: 0.05}
  null_baseline: true           # also fit the head on permuted slide labels, reported beside the model

analyses:                       # each analysis runs when its options are given ({} = defaults); the
                                #   options are keyword arguments of emo.analysis.<name>
  clusters: null                # measured vs predicted clusters, e.g. {genes: pam50, k: 4}
  differential_expression: null # e.g. {contrast: er_status, covariates: [age]} (a column of the sample sheet)
  enrich: null                  # ranks genes by how well they are predicted (evaluate/<first split>/genes.csv),
                                #   e.g. {score: rho, permutations: 1000}; needs gmt
  gmt: []                       # gene-set files for enrichment, e.g. hallmark.gmt

executor:
  name: local                   # local | ray | slurm
  options: {}                   # local: {workers: 2}; ray: {address: auto}; slurm: {partition: gpu,
                                #   gpus_per_node: 1, time_min: 120, mem_gb: 16, chunk_size: 10, stage: true}
"""

SPATIAL_TEMPLATE = """\
# emo spot-level study: run it with `emo run study.yaml`. With a `spatial:` section the study runs
# spatial_train → spatial_predict → spatial_evaluate → report (instead of tile → features → …);
# re-running skips stages whose inputs did not change. Relative paths are relative to this file.

out: emo-study                  # spatial_model/, spatial_predictions/<S>.csv, spatial_evaluate/, report.html

spatial:
  data_dir: her2st              # her2st layout: images/<S>.jpg, counts/<S>.tsv.gz, spots/<S>.tsv
  train_sections: [B4, C2, C3]  # sections with images to fit on
  test_sections: [C4]           # held out: predicted and evaluated (never in the target basis)
  genes: her2st/hist2st_785_genes.txt   # gene-list file (one symbol a line), or panels/genes ("pam50,ESR1")
  tile_sizes_um: [224, 100, 448]        # spot-centred tiles per scale, features concatenated
  backbone: efficientnet_lite0_ms
  alpha: 3.0                    # ridge penalty per feature
  n_components: 10              # target principal components (0: fit every gene directly)
  context_radius: 1.5           # neighbour-mean radius in spot pitches (0: off)
  basis_sections: null          # count sections shaping the target basis (null: every section but the test ones)
  cache: null                   # spot-feature cache folder (null: <out>/spatial_cache)
"""


def write_template(path: str | Path = "study.yaml", force: bool = False, spatial: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not force:
        raise EmoError(f"{path}: already exists; pass --force to overwrite it")
    return write_text_atomic(path, SPATIAL_TEMPLATE if spatial else STUDY_TEMPLATE)
