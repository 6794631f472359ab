"""`toolkit serve RUN_DIR`: the exploration server. Talk to the newest checkpoint while the run trains,
and watch its loss, draws per source, dream temperature and alerts live in one self-contained page."""

from toolkit.serve.app import ModelHolder, create_app

__all__ = ["ModelHolder", "create_app"]
