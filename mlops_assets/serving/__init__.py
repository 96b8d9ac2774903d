"""Online serving: ``mlops serve``, a FastAPI app over plain, typed Python.

* ``config``: :class:`ServeConfig` (host, port, A/B share, limits); the environment is read in ``load_serve_config``.
* ``schema``: the request model built from the feature table's ``OnlineSpec``, and every validation rule.
* ``reloading``: build-then-swap of a value whose source changed (no failed request during a swap).
* ``models``: the served model set (champion, A/B challenger, shadow) from the registry aliases.
* ``store``: the online store ``CURRENT`` names.
* ``service``: scoring (vectorised per batch), the prediction log, health and model descriptions.
* ``app``: the FastAPI routes and uvicorn.
"""

from mlops_assets.serving.app import create_app, serve
from mlops_assets.serving.config import ServeConfig, load_serve_config

__all__ = ["ServeConfig", "create_app", "load_serve_config", "serve"]
