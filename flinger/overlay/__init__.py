"""The per-server overlays: `flinger overlay` makes them (make.py, the pipeline); a deploy
reads what they hold without loading the pipeline (public.py, store.py, inputs.py)."""
