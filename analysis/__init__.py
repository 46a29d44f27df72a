"""Analysis scripts: each reads a finished pipeline workdir and writes WORKDIR/figures/<name>/.

Every script takes `--workdir=DIR`, writes its JSON (numbers, settings, seeds and keys, config and
stage hashes, checkpoint ids, library versions), PNG + PDF figures and CSV/NPZ arrays through
temporary names, and redraws its figures from the saved files with `--replot`.

| command | outputs in DIR/figures/<name>/ |
|---|---|
| `python -m analysis.tsne --workdir=DIR` | tsne.json, tsne.npz, tsne.png/pdf (t-SNE by family and by group, PCA scatter), tsne_grid.png/pdf |
| `python -m analysis.pca_groups --workdir=DIR` | pca_groups.json/png/pdf (split scatter with cuts, scree, ordered cosine heatmap), trajectories.json/png/pdf |
| `python -m analysis.lmc --workdir=DIR` | lmc.json, lmc_summary.csv (Table 5 layout), lmc_curves.png/pdf, simplex.json |
| `python -m analysis.hessian_alignment --workdir=DIR` | alignment.json, lanczos.json, alignment_tiers, cos_heatmap, principal_angles, ritz_history (and gain_percentile with `--gain_test`) .png/pdf |
| `python -m analysis.calibration --workdir=DIR` | calibration.json, calibration.npz, calibration_curve, calibration_B_hist, split_stability .png/pdf |
| `python -m analysis.lr_sweep --workdir=DIR` | lr_sweep.json, lr_sweep.csv, lr_sweep.png/pdf, runs/<settings hash>/ (reused on rerun) |
| `python -m analysis.diagnostics --workdir=DIR` | diagnostics.json, displacement.csv, displacement_epochs.csv, displacement.png/pdf, perturbation.json/png/pdf |

Each script's module docstring gives its main flags; `--helpfull` lists all of them.
"""
