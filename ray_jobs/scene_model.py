"""The model of a scene prediction: where its weights come from (driver) and how raw windows of a
scene become its inputs and its outputs a per-window map (actors).

``--model`` is one of

* a fine-tuning run folder, checkpoint folder or ``state.pt`` (:func:`ray_jobs.task.load_finetuned`;
  the task is the one stored beside the weights);
* ``runs:/<run id>/model`` or ``models:/<name>/<version>``: the fine-tuned model a fine-tuning run
  logged to MLflow (``model_state_dict.pt`` + ``task.yaml``);
* ``official:<AnySat.pth>``: released encoder weights (:meth:`anysat.AnySat.from_official`),
  embeddings only.

A fine-tuned model predicts classes (its head) or embeddings (its encoder); an encoder alone only
embeddings. Inputs are normalised with the statistics given in the scene spec or, failing that, those
of the training store (``--config``: the fine-tuning config the model was trained with).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from anysat import AnySat
from anysat.sensors import get_sensor
from pipelines.scene import Scene
from ray_jobs.data import convert_dates
from ray_jobs.finetune_config import ResolvedTask
from ray_jobs.plan import DataPlan
from ray_jobs.task import load_finetuned, model_from_state
from ray_jobs.tracking import download_model

__all__ = ["OUTPUTS", "ModelSpec", "load_model_spec", "Normalisation", "normalisation", "SceneModel"]

OUTPUTS = ("class", "probability", "patch", "tile")
"""class: class map; probability: class map + per-class probabilities; patch / tile: embeddings."""


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    """``finetuned`` or ``encoder``."""
    state: dict
    task: dict | None
    attention: str
    description: str


def load_model_spec(model: str, tracking_uri: str | None, storage_options: dict | None = None,
                    weights: str = "best") -> ModelSpec:
    """Weights + task of ``--model``, loaded once in the driver. FileNotFoundError / ValueError name it."""
    if model.startswith("official:"):
        path = model[len("official:"):]
        if not Path(path).is_file():
            raise FileNotFoundError(f"--model {model}: no weights file {path}")
        enc = AnySat.from_official(path)
        return ModelSpec("encoder", enc.state_dict(), None, enc.attention, f"official weights {path}")
    if model == "official":
        raise ValueError("--model official needs the weights file: official:<path to AnySat.pth>")
    if model.startswith(("runs:/", "models:/")):
        d = download_model(tracking_uri or "sqlite:///mlflow.db", model)
        sd, meta = sorted(d.rglob("model_state_dict.pt")), sorted(d.rglob("task.yaml"))
        if not sd or not meta:
            raise FileNotFoundError(f"--model {model}: not a fine-tuned model (no model_state_dict.pt + task.yaml)")
        info = yaml.safe_load(meta[0].read_text())
        state = torch.load(sd[0], map_location="cpu", weights_only=True)
        return ModelSpec("finetuned", state, info["task"], info.get("attention") or "tokens", f"MLflow {model}")
    ck = load_finetuned(model, storage_options, None, weights)
    if ck["task"] is None:
        raise ValueError(f"--model {model}: the checkpoint does not record its task (no finetune_state.pt)")
    # the attention mode is not in the weights; "tokens" is what every CPU job trains with
    return ModelSpec("finetuned", ck["state"], ck["task"].model_dump(), "tokens",
                     f"fine-tuned {ck['file']} ({weights} weights, step {ck['step']})")


@dataclass(frozen=True)
class Normalisation:
    mean: dict[str, tuple[float, ...]]
    std: dict[str, tuple[float, ...]]
    date_origin: str | None


def normalisation(scene: Scene, plan: DataPlan | None) -> Normalisation:
    """Per-sensor statistics: the scene spec's, else the training store's (``plan``)."""
    mean, std = {}, {}
    for key, s in scene.sensors.items():
        if s.mean is not None and s.std is not None:
            mean[key], std[key] = s.mean, s.std
        elif plan is not None and key in plan.sensors:
            mean[key], std[key] = plan.sensors[key].mean, plan.sensors[key].std
        else:
            raise ValueError(f"{scene.source}: sensors.{key}: give mean and std, or --config with a store that "
                             f"has {key}")
    origin = plan.date_origin if plan is not None and scene.date_origin == "doy" else scene.date_origin
    return Normalisation(mean, std, origin)


def _model_bands(key: str, raw: np.ndarray) -> np.ndarray:
    """``(..., C_raw, H, W)`` in the sensor's raw band order -> its model bands, derived ones computed
    as the training loader does."""
    sensor = get_sensor(key)
    idx = {b: i for i, b in enumerate(sensor.raw_bands)}
    derived = {d.name: d for d in sensor.derived}
    cols = []
    for b in sensor.bands:
        if b in derived:
            d = derived[b]
            cols.append(np.clip(raw[..., idx[d.numerator], :, :] / (raw[..., idx[d.denominator], :, :] + d.eps),
                                -d.clip, d.clip))
        else:
            cols.append(raw[..., idx[b], :, :])
    return np.stack(cols, axis=-3)


class SceneModel:
    """The model of a :class:`ModelSpec` on one device: ``(B, ...)`` raw windows -> ``(B, C, n, n)``
    outputs on the map's cells (``n = window / cell``)."""

    def __init__(self, spec: ModelSpec, output: str, patch_size_m: int, norm: Normalisation, days: dict,
                 device: str = "cpu"):
        self.device = torch.device(device)
        if spec.kind == "finetuned":
            self.task = ResolvedTask.model_validate(spec.task)
            self.model = model_from_state(spec.state, self.task, spec.attention).to(self.device).eval()
            self.encoder = self.model.encoder
        else:
            if output in ("class", "probability"):
                raise ValueError(f"--output {output} needs a fine-tuned model; an encoder gives patch / tile")
            self.task, self.model = None, None
            self.encoder = AnySat.from_official(spec.state, attention=spec.attention).to(self.device).eval()
        self.output, self.patch, self.norm = output, int(patch_size_m), norm
        self.dates = {k: convert_dates(np.asarray(v), norm.date_origin) for k, v in days.items()}

    def inputs(self, raw: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """``{sensor: (B, T, C_raw, h, w)}`` -> model inputs (normalised, NaN -> 0, dates)."""
        x = {}
        for key, v in raw.items():
            sensor = get_sensor(key)
            mean = np.asarray(self.norm.mean[key], np.float32)[:, None, None]
            std = np.asarray(self.norm.std[key], np.float32)[:, None, None]
            z = np.nan_to_num((_model_bands(key, v) - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)
            if sensor.time_series:
                x[key] = torch.from_numpy(np.ascontiguousarray(z, np.float32))
                d = np.broadcast_to(self.dates[key][None], (len(v), len(self.dates[key])))
                x[f"{key}_dates"] = torch.from_numpy(np.ascontiguousarray(d, np.int64))
            else:
                x[key] = torch.from_numpy(np.ascontiguousarray(z[:, 0], np.float32))
        return {k: t.to(self.device) for k, t in x.items()}

    @property
    def channels(self) -> int:
        if self.output in ("class", "probability"):
            return len(self.task.classes)
        return self.encoder.embed_dim

    @torch.inference_mode()
    def __call__(self, raw: dict[str, np.ndarray], n: int) -> np.ndarray:
        x = self.inputs(raw)
        if self.output in ("class", "probability"):
            y = self.model(x).float()
        else:
            y = self.encoder(x, patch_size=self.patch, output=self.output).float()
            y = y.permute(0, 3, 1, 2) if self.output == "patch" else y
        if y.dim() == 2:  # one vector per window (tile head / tile embedding): the whole window
            y = y[:, :, None, None].expand(-1, -1, n, n)
        elif y.shape[-1] != n:  # dense logits or patches on another grid than the map's cells
            y = F.interpolate(y, size=(n, n), mode="nearest" if y.shape[-1] < n else "area")
        return y.cpu().numpy()
