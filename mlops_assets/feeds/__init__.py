"""The shipped feeds, one package each (tables, contracts, replay). Models name the feed they read."""
