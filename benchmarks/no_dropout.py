"""Deterministic training-mode forwards for the loss comparison, shared by ``side_by_side.py``
(knet's venv) and ``reference_losses.py`` (the reference's): torch only."""
import torch


def dropout_off(model: torch.nn.Module) -> None:
    """Every dropout (``nn.Dropout``, ``nn.Dropout2d``, ... : any ``_DropoutNd``) and drop-path
    module of ``model`` to eval mode; the rest stays as it is."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) or type(module).__name__ == "DropPath":
            module.eval()
