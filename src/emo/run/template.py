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
spots: null                     # spot-level study instead (spatial transcriptomics sections); `emo init --spatial`

slides:                         # `emo tile`'s options (TilingConfig), plus which slides
  paths:                        # slide files or globs (.svs .ndpi .mrxs .tif; plain .jpg/.png need mpp)
    - slides/*.svs
  mpp: null                     # level-0 µm/px, only for slides without scale metadata
  roi: null                     # folder of <slide_id>.geojson regions to keep (null: whole tissue)
  min_roi: null                 # keep tiles with at least this fraction inside the ROI (null: centre inside)
  roi_classes: null             # QuPath annotation classes that make the ROI (null: every class but Ignore*)
  tile_size_um: 271             # tile edge in µm (the paper: 598 px at 0.453 µm/px)
  target_mpp: 0.453             # tiles are resampled to this µm/px
  min_tissue: 0.5               # drop tiles with less tissue than this fraction
  min_sharpness: 10.0           # drop blurred tiles (variance of the Laplacian below this)
  normalize: true               # Macenko stain normalisation
  stain_reference: null         # reference image or name; null: emo's default
  stain_sample_tiles: 64        # tissue tiles sampled per slide to estimate its stains
  thumbnail_mpp: 8.0            # µm/px of the thumbnail tissue is detected on
  save_tiles: false             # also write the normalised tiles as JPEGs
  seed: 0                       # which tiles are sampled for stain estimation
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
  orientation: auto             # matrices: auto (rows/columns matched to the sheet's sample ids),
                                #   genes-by-samples or samples-by-genes
  on_duplicate: error           # a patient with several samples / a slide of several samples: error, first, all

features:                       # `emo features`' options (ExtractionConfig)
  backbone: efficientnet_lite0  # `emo info --backbones` lists the registry (or timm:<arch>, torchvision:<arch>)
  weights: default              # default | imagenet | none | hf-hub:<repo id> | checkpoint file
  batch_size: 64
  device: null                  # null: cuda when available, else cpu
  workers: 2                    # tile-reading processes
  pooling: null                 # avg | multistage (timm only); null: the backbone's own
  input_size: null              # resize tiles to this many px; null: the backbone's input size
  slides_per_job: 8             # slides per job when the executor is ray or slurm

training:
  protocol: features            # features: heads on cached features (one backbone pass); paper: one CNN per
                                #   gene (the paper's protocol); finetune: one network for all genes, end to end
  head: ridge                   # head for protocol features: ridge | mlp | attention_mil
  genes: null                   # panel names and/or genes, e.g. "pam50,ESR1", or a gene-list file; null: all
                                #   kept genes (the paper protocol needs genes: one CNN each)
  seed: 0                       # seeds every random choice of every protocol (sub-configs' seed is this one)
  level: slide                  # slide: bulk targets, slide = mean of tiles; tile: per-tile/spot targets
  alphas: null                  # ridge penalties searched; null: n_train × logspace(-4, 3, 15)
  mlp: null                     # MLP head options, e.g. {hidden: 256, max_epochs: 200}; null: defaults
  attention_mil: null           # attention-MIL head options, e.g. {hidden: 128, tiles_per_slide: 256}; null: defaults
  paper: null                   # paper-protocol options, e.g. {max_epochs: 500, lr: 1.0e-6}; null: the paper's
  finetune: null                # fine-tuning options for protocol finetune, e.g. {backbone: efficientnet_lite0,
                                #   max_epochs: 30, n_components: 10, hed_jitter: 0.05}; null: defaults
  allow_missing_features: false # skip train/tune slides without features
  permute_labels: false         # fit on shuffled labels (a null model); the study's null stage does this itself

prediction:
  genes: null                   # genes drawn as heatmaps and written to GeoJSON (every gene is always
                                #   predicted into predictions/spatial/ and average.h5ad); null: none
  panel: null                   # a panel drawn the same way, e.g. pam50
  chunk_tiles: 2048             # tiles predicted per chunk (bounds memory)
  geojson_top: 5                # with no genes or panel: GeoJSON measures the model's 5 best genes by tuning ρ
  classes: slide                # GeoJSON classes by thirds of the first gene: slide (each slide's own
                                #   cut-offs) or cohort (cut-offs over all slides)

evaluation:
  splits: [validation, test]    # each evaluated into evaluate/<split>/ (test also gets ρ concordance
                                #   with validation)
  thresholds:                   # `emo evaluate`'s rules and report options (EvaluateThresholds)
    r2_min: 0.2                 # selection (validation split): R²pred above this ...
    fdr_max: 0.001              # ... and BH-FDR below this
    alpha: 0.05                 # test split: Bonferroni P below this (and ρ > 0) validates a gene
    fdr_report: 0.05            # "significant at FDR <" count of the report
    r2_report: [0.2, 0.3, 0.4]  # "R²pred >" counts of the report
    external_cohorts: []        # cohorts whose R²pred is not computed (besides obs external)
    cohorts: []                 # evaluate only these cohorts (empty: all of the split)
    subtype_column: null        # obs column of intrinsic subtypes (null: pam50_subtype, subtype, … if present)
    top: 25                     # genes in the measured-vs-predicted scatter grid
    figures: true
  null_baseline: true           # also fit the head on permuted patient labels, reported beside the model
  null_permutations: 10         # permuted-label heads (patients permuted whole): the null distribution

analyses:                       # each analysis runs when its options are given ({} = defaults); the
                                #   options are those of `emo analyze <name>` (ClustersConfig, DEConfig, EnrichConfig)
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

SPOT_TEMPLATE = """\
# emo spot-level study: run it with `emo run study.yaml`. With a `spots:` section the study runs
# spot_train → spot_predict → spot_evaluate → report (instead of tile → features → …);
# re-running skips stages whose inputs did not change. Relative paths are relative to this file.

out: emo-study                  # spot_model/, spot_predictions/<S>.csv, spot_evaluate/, report.html

spots:                          # `emo spatial train`'s options (SpotModelConfig), plus sections and genes
  data_dir: her2st              # her2st layout: images/<S>.jpg, counts/<S>.tsv.gz, spots/<S>.tsv
  train_sections: [B4, C2, C3]  # sections with images to fit on
  test_sections: [C4]           # held out: predicted and evaluated (never in the target basis)
  genes: her2st/hist2st_785_genes.txt   # gene-list file (one symbol a line), or panels/genes ("pam50,ESR1")
  tile_sizes_um: [224, 100, 448]        # spot-centred tiles per scale, features concatenated
  backbone: efficientnet_lite0_ms
  tile_px: 224                  # pixels a side of every spot tile
  section_standardize: true     # standardise features within each section (removes staining offsets)
  alpha: 3.0                    # ridge penalty per feature
  n_components: 10              # target principal components (0: fit every gene directly)
  context_radius: 1.5           # neighbour-mean radius in spot pitches (0: off)
  basis_sections: null          # count sections shaping the target basis (null: every section but the test ones)
  cache: null                   # spot feature cache folder (null: $EMO_CACHE_DIR or ~/.cache/emo, shared)
"""


def write_template(path: str | Path = "study.yaml", force: bool = False, spatial: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not force:
        raise EmoError(f"{path}: already exists; pass --force to overwrite it")
    return write_text_atomic(path, SPOT_TEMPLATE if spatial else STUDY_TEMPLATE)
