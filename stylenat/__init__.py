"""StyleNAT: style-based generation with Hydra neighborhood attention."""

__version__ = "0.1.0"


def load_generator(path, device="cpu", dtype="fp32"):
    """Load an inference snapshot (native or converted official) as a ready-to-sample generator whose
    matrix products run in `dtype` (fp32 | bf16 | fp16; images come out float32 either way).

    Imported on call, so `import stylenat` stays light (no torch until a model is needed).
    """
    from stylenat.reference import load_generator as _load

    return _load(path, device=device, dtype=dtype)


__all__ = ["load_generator", "__version__"]
