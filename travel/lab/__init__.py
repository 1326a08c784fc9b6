"""The lab: what measures the product rather than being it. Evaluation and its metrics, the glyph recogniser, the
benchmark dataset builders, the 2D mode-coverage benchmark and the speed bench. The core never imports this package."""
