"""travel: unpaired image-to-image translation with a Siamese discriminator and the TraVeL loss."""

__version__ = "0.1.0"
DEFAULT_CHECKPOINT = "emoji3d"  # shipped in weights/: what `travel translate` and the demo use when none is named

# Heavy modules load on first use, so `import travel` and `travel translate` start fast.
_LAZY = {
    "fit": "travel.api",
    "fit_config": "travel.api",
    "resume": "travel.api",
    "resume_config": "travel.train",
    "FitResult": "travel.train",
    "resolve": "travel.config",
    "Translator": "travel.inference",
    "FitConfig": "travel.config",
    "ModelConfig": "travel.config",
    "GeneratorConfig": "travel.config",
    "DiscriminatorConfig": "travel.config",
    "LossConfig": "travel.config",
    "DataConfig": "travel.config",
    "TrainConfig": "travel.config",
    "TravelError": "travel.errors",
}

__all__ = ["__version__", "DEFAULT_CHECKPOINT", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'travel' has no attribute {name!r}")
