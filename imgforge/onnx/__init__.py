"""Everything ONNX, above imgforge.device and beside torch: export.py (networks -> checked graphs with
sidecars, `imgforge export`), cache.py (the graph cache the ONNX backend runs from), session.py (ONNX Runtime
sessions and execution providers). imgforge.runtime picks between torch and this package."""
