"""The shipped models, one package each (spec + feature SQL). They are registered in ``mlops_assets/catalog.py``."""
