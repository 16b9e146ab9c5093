"""The MLflow model the pretraining run registers: an AnySat encoder state dict behind pyfunc.

MLflow 3 registers only *logged models*, not loose artifacts, so the encoder state dict (plain
tensors, loadable with ``torch.load(weights_only=True)``) is logged as the artifact of this small
pyfunc wrapper. ``mlflow.pyfunc.load_model(uri).predict({"s2": array, "s2_dates": array, ...},
params={"patch_size": 20, "output": "tile"})`` then runs the encoder; the raw weights are at
``<model>/artifacts/encoder_state_dict.pt``.
"""

from __future__ import annotations

import warnings

import mlflow.pyfunc
import numpy as np
import torch
import yaml

from anysat import AnySat


# Defining a PythonModel subclass makes MLflow inspect ``predict`` and warn that it has no type
# hints, under a warning filter of its own, in every process that imports this module. Hints would
# switch on MLflow's input validation, which cannot describe a dict of per-sensor arrays, so the
# warning is recorded here instead of printed.
with warnings.catch_warnings(record=True):

    class AnySatEncoderModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            with open(context.artifacts["model_config"]) as f:
                cfg = yaml.safe_load(f)
            self.model = AnySat.from_size(cfg["size"], sensors=cfg["sensors"], **cfg.get("kwargs", {}))
            sd = torch.load(context.artifacts["state_dict"], map_location="cpu", weights_only=True)
            self.model.load_state_dict(sd)
            self.model.eval()

        def predict(self, context, model_input, params=None):
            params = params or {}
            x = {k: torch.as_tensor(np.asarray(v)) for k, v in dict(model_input).items()}
            x = {k: (v.long() if k.endswith("_dates") else v.bool() if k.endswith("_mask") else v.float())
                 for k, v in x.items()}
            with torch.inference_mode():
                y = self.model(x, patch_size=int(params.get("patch_size", 10)), output=params.get("output", "tile"))
            return y.numpy()
