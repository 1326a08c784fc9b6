"""The web demo (apps/demo.py), shipped inside the package as travel.apps."""
