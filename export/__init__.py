"""Export (the [train] extra): a trained run, or any recurrent PyTorch module, to a
stateful single-step ONNX graph."""

__all__ = ["export_module", "export_run"]


def export_run(*args, **kwargs):
    """See edgernn.export.run.export_run."""
    from edgernn.export.run import export_run as _export_run

    return _export_run(*args, **kwargs)


def export_module(*args, **kwargs):
    """See edgernn.export.module_export.export_module."""
    from edgernn.export.module_export import export_module as _export_module

    return _export_module(*args, **kwargs)
