"""Figures and CSV of `analysis.diagnostics`, drawn only from its saved JSON results."""

import numpy as np

from analysis import plotting


def write_displacement_csv(outputs, displacement: dict) -> None:
    layers = sorted({layer for row in displacement["rows"] for layer in row["layers"]})
    rows = [[row["model"], row["kind"], row["norm"]] + [row["layers"].get(layer, "") for layer in layers]
            for row in displacement["rows"]]
    outputs.write_csv("displacement.csv", ["model", "kind", "norm"] + [f"norm {layer}" for layer in layers], rows)
    series = [[p["series"], p["epochs"], p["norm"], p["train_probe_loss"], p["source"]] for p in displacement["epoch_series"]]
    outputs.write_csv("displacement_epochs.csv", ["series", "epochs", "norm", "train_probe_loss", "source"], series)


def plot_displacement(outputs, displacement: dict) -> None:
    rows = displacement["rows"]
    finals = [row for row in rows if row["kind"] in ("joint", "merged")]
    figure, axes = plotting.plt.subplots(1, 4, figsize=(21, 4.8))

    positions = np.arange(len(finals))
    axes[0].bar(positions, [row["norm"] for row in finals],
                color=["tab:red" if row["kind"] == "joint" else "tab:blue" for row in finals])
    for position, row in zip(positions, finals):
        branches = [r["norm"] for r in rows if r["kind"] == f"branch of {row['model']}"]
        axes[0].scatter([position] * len(branches), branches, color="black", s=12, zorder=3,
                        label="branch endpoints" if position == positions[-1] else None)
    axes[0].set_xticks(positions, [row["model"] for row in finals], rotation=30, ha="right")
    axes[0].set_ylabel("‖θ − θ0‖ (trainable parameters)")
    axes[0].set_title("Displacement from θ0 (red joint, blue merged)")
    axes[0].legend()

    model = displacement["split_model"]
    compared = [row for row in finals if row["kind"] == "joint"] + [row for row in finals if row["model"] == model]
    layers = sorted(compared[0]["layers"])
    width = 0.8 / len(compared)
    for index, row in enumerate(compared):
        axes[1].bar(np.arange(len(layers)) + index * width, [row["layers"][layer] for layer in layers], width, label=row["model"])
    axes[1].set_xticks(np.arange(len(layers)) + 0.4 - width / 2, layers, rotation=30, ha="right")
    axes[1].set_ylabel("‖θ − θ0‖ of the layer")
    axes[1].set_title("Per-layer displacement")
    axes[1].legend()

    series = list(dict.fromkeys(p["series"] for p in displacement["epoch_series"] if p["series"] != "base"))
    for name in series:
        points = sorted((p for p in displacement["epoch_series"] if p["series"] in (name, "base")), key=lambda p: p["epochs"])
        style = "o--" if name.startswith("joint") else "s-"
        axes[2].plot([p["epochs"] for p in points], [p["norm"] for p in points], style, label=name)
        axes[3].plot([p["epochs"] for p in points], [p["train_probe_loss"] for p in points], style, label=name)
    axes[2].set_xlabel("epochs trained")
    axes[2].set_ylabel("‖θ − θ0‖")
    axes[2].set_title("Displacement over training")
    axes[3].set_xlabel("epochs trained")
    axes[3].set_ylabel("training-probe loss (nats per token)")
    axes[3].set_title("Training-probe loss over training")
    for axis in axes[2:]:
        axis.legend()

    identity = displacement["parallel_axis"].get(model, {}).get("stored_merged_checkpoint", {})
    probe = displacement["train_probe"]
    plotting.caption(figure, (
        f"Trainable parameters, per-leaf float64 sums of squares. Training probe: {probe['examples']} examples of {probe['tasks']} tasks. "
        f"Parallel-axis identity for {model} on the stored checkpoints: relative residual {identity.get('relative_residual', float('nan')):.1e}. "
        "Merged points before epoch 1 average the branch snapshots with the merge weights. " + " ".join(displacement.get("notes", []))),
        y=-0.12)
    outputs.save_figure(figure, "displacement")
    plotting.close(figure)


def plot_perturbation(outputs, perturbed: dict) -> None:
    sigmas = np.asarray(perturbed["sigmas"])
    models = list(perturbed["models"])
    figure, axes = plotting.plt.subplots(1, 3, figsize=(16, 4.6))

    for model in models:
        result = perturbed["models"][model]
        style = "o--" if model.startswith("joint") else "s-"
        losses = np.asarray(result["losses"])
        se_loss = losses.std(axis=1, ddof=1) / np.sqrt(losses.shape[1]) if losses.shape[1] > 1 else np.zeros(len(sigmas))
        axes[0].errorbar(np.arange(len(sigmas)), result["mean_loss"], yerr=se_loss, fmt=style, capsize=3, label=model)
        positive = sigmas > 0
        axes[1].errorbar(sigmas[positive], np.asarray(result["mean_delta"])[positive],
                         yerr=np.asarray(result["se_delta"])[positive], fmt=style, capsize=3, label=model)
    axes[0].set_xticks(np.arange(len(sigmas)), [f"{s:g}" for s in sigmas])
    axes[0].set_xlabel("σ (relative to each tensor's RMS)" if perturbed["noise"].startswith("relative") else "σ (absolute)")
    axes[0].set_ylabel("mean held-out loss (nats per token)")
    axes[0].set_title("Loss under weight noise (categorical σ axis)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("σ (log scale)")
    axes[1].set_ylabel("ΔL = L(θ + ε) − L(θ)")
    axes[1].set_title("Loss increase, mean ± SE over draws")

    aucs = [perturbed["models"][m]["auc"] for m in models]
    axes[2].bar(np.arange(len(models)), aucs, color=["tab:red" if m.startswith("joint") else "tab:blue" for m in models])
    axes[2].set_xticks(np.arange(len(models)), models, rotation=30, ha="right")
    axes[2].set_ylabel("flatness AUC = ∫ mean ΔL dσ (trapezoid)")
    axes[2].set_title("Flatness AUC (lower = flatter)")
    for axis in axes[:2]:
        axis.legend()

    probe = perturbed["probe"]
    plotting.caption(figure, (
        f"{perturbed['noise']}, {perturbed['perturbed_parameters']}; {perturbed['draws']} draws per σ, the same draws for every model. "
        f"Held-out probe: {probe['examples']} examples of {probe['tasks']} tasks, token-weighted loss. "
        "Perturbation flatness depends on the parametrization; compare it with the Hessian and LMC diagnostics."))
    outputs.save_figure(figure, "perturbation")
    plotting.close(figure)
