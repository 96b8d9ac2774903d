"""The registered models: the one place a model is added. A model brings its own package (spec, feature SQL,
contracts of its own feed if it has one) and one line here; nothing else in the platform names it.

The first model is the default of every ``--model`` option and of the service's ``POST /predict``.
"""

from mlops_assets.core.catalog import Catalog
from mlops_assets.models.flight_cancellation import FLIGHT_CANCELLATION
from mlops_assets.models.flight_delay import FLIGHT_DELAY

CATALOG = Catalog(
    models=(
        FLIGHT_DELAY,
        FLIGHT_CANCELLATION,
    )
)
