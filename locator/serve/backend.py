"""serve.py --backend URL: the model calls go to a TensorFlow Serving REST endpoint (tensorflow_model_server, or
another serve.py: the same API), serve.py keeping the place answers, the page, --learn and the batching in front.

The backend serves models/serving/<name>/ (the exports are in its layout); serve.py reads each version's
metadata.json (classes, threshold) from the same folder, so both must see the same models/serving/. Which
version is served is the backend's answer to GET /v1/models/<name>; every call names that version, so an answer
and the metadata it is read with always belong together, even while the backend reloads.
"""
import threading

import numpy as np
import requests

from locator.core import config
from locator.runs import export


class BackendError(Exception):
    """The backend did not answer, or not as TF Serving does: 502 to the client."""


class Backend:
    def __init__(self, url: str, name: str, timeout: float = config.SERVE_REQUEST_TIMEOUT):
        self.url, self.name, self.timeout = url.rstrip("/"), name, timeout
        self._local = threading.local()  # one keep-alive session a thread (requests.Session is not thread-safe)

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _call(self, method: str, path: str, **kw) -> dict:
        try:
            r = self._session().request(method, f"{self.url}/v1/models/{self.name}{path}", timeout=self.timeout,
                                        **kw)
            body = r.json()
        except (requests.RequestException, ValueError) as e:
            raise BackendError(f"the model server {self.url} did not answer ({type(e).__name__})")
        if r.status_code != 200:
            raise BackendError(f"the model server {self.url} answered {r.status_code}: "
                               f"{str(body.get('error', body) if isinstance(body, dict) else body)[:200]}")
        return body

    def versions(self) -> list:
        """The versions the backend has AVAILABLE, oldest first (its GetModelStatus)."""
        status = self._call("GET", "")["model_version_status"]
        return sorted(int(s["version"]) for s in status if s.get("state") == "AVAILABLE")

    def signature_defs(self, version: int) -> dict:
        return self._call("GET", f"/versions/{version}/metadata")["metadata"]["signature_def"]

    def model(self, version: int) -> "RemoteModel":
        return RemoteModel(self, version)


class RemoteModel:
    """What predictor.Predictor calls on a model (predict, input_shape), done by the backend's :predict."""

    def __init__(self, backend: Backend, version: int):
        self.backend, self.version = backend, version
        sig = backend.signature_defs(version)["signature_def"][export.SIGNATURE]
        dims = sig["inputs"][export.INPUT]["tensor_shape"]["dim"]
        self.input_shape = tuple(None if int(d["size"]) < 0 else int(d["size"]) for d in dims)

    def predict(self, x, batch_size: int = 128, verbose: int = 0) -> np.ndarray:
        x = np.asarray(x, np.uint8)
        parts = []
        for i in range(0, len(x), batch_size):
            # columnar format: one tensor, not a list of objects; uint8 inputs are sent as numbers (TF Serving
            # decodes b64 only for string inputs)
            out = self.backend._call("POST", f"/versions/{self.version}:predict",
                                     json={"signature_name": export.SIGNATURE, "inputs": x[i:i + batch_size].tolist()})
            outputs = out.get("outputs")
            if isinstance(outputs, dict):  # a signature with several outputs answers by name
                outputs = outputs.get(export.OUTPUT)
            parts.append(np.asarray(outputs, np.float32))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
