"""Models: the zoo of plain PyTorch architectures (``zoo``); capture and planning live beside it.

Submodules are imported explicitly (``from secinfer.models.zoo import resnet18``) so importing
this package stays cheap.
"""

__all__: list[str] = []
