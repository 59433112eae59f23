"""Export (the [train] extra): a trained run to a stateful single-step ONNX graph."""

__all__ = ["export_run"]


def export_run(*args, **kwargs):
    """See edgernn.export.run.export_run."""
    from edgernn.export.run import export_run as _export_run

    return _export_run(*args, **kwargs)
