"""Online serving: ``mlops serve``, a FastAPI app over plain, typed Python, for every registered model (one without
a champion yet answers 503 saying what to do, the others keep answering).

* ``config``: :class:`ServeConfig` (host, port, A/B share, limits, the maximum feature age); the environment is read
  in ``load_serve_config``.
* ``schema``: the request model built from the feature table's ``OnlineSpec``, and every validation rule (the codes'
  form and accepted values included).
* ``reloading``: build-then-swap of a value whose source changed (no failed request during a swap).
* ``models``: the served model set (champion, A/B challenger, shadow) from the registry aliases, falling back to the
  newest earlier champion that verifies when the champion's files do not.
* ``store``: the online store ``CURRENT`` names.
* ``service``: one model's scoring (vectorised per batch), prediction log, health and model descriptions.
* ``catalog``: a service per servable model of the catalog, and the service-wide health and model listing.
* ``app``: the FastAPI routes (``POST /models/{model}/predict``, ``POST /predict`` for the default model, ``GET
  /models``, ``GET /models/{model}``, ``GET /health``) and uvicorn.
* ``transport``: uvicorn's HTTP protocol sending an answer's headers and body in one write.
"""

from mlops_assets.serving.app import create_app, serve
from mlops_assets.serving.config import ServeConfig, load_serve_config

__all__ = ["ServeConfig", "create_app", "load_serve_config", "serve"]
