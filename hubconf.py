"""torch.hub entry points of cgnet.

    torch.hub.load("<owner>/cgnet", "cgnet_camvid", source="github")   # the shipped CamVid model
    torch.hub.load("<owner>/cgnet", "cgnet", num_classes=19)           # an untrained CGNet
    torch.hub.load("path/to/clone", "cgnet_camvid", source="local")

Works from a clone or a hub download where the package is not installed: the repository's src/
is then put on sys.path. The CamVid weights ship inside the package (src/cgnet/weights), so
nothing else is downloaded.
"""
dependencies = ["torch", "numpy", "cv2"]

# the camvid weights' configuration: the only one with pretrained weights
_CAMVID_ARCH = {"num_classes": 11, "m": 3, "n": 21}


def _package():
    """The cgnet package: the installed one, else the one in this repository's src/."""
    import importlib
    import sys
    from pathlib import Path

    try:
        return importlib.import_module("cgnet")
    except ImportError:
        src = str(Path(__file__).resolve().parent / "src")
        if src not in sys.path:
            sys.path.insert(0, src)
        return importlib.import_module("cgnet")


def cgnet_camvid(pretrained: bool = True):
    """CGNet M3N21 trained on CamVid (11 classes; 64.05 test mIoU at 360x480), in eval mode.

    Args:
        pretrained: the shipped weights (default); False gives the same architecture untrained.

    Returns:
        A `cgnet.CGNet` whose `.meta` holds the preprocessing (`cgnet.to_tensor(image, meta
        ["preprocess"])`), class names, palette and the weights' provenance.
    """
    package = _package()
    shipped = package.load_model("camvid")
    if pretrained:
        return shipped
    model = package.CGNet(**_CAMVID_ARCH).eval()
    model.meta = {key: value for key, value in shipped.meta.items() if key not in ("config", "provenance", "weights")}
    return model


def cgnet_weights(name: str = "camvid"):
    """Catalogued weights by name, in eval mode (`cgnet weights list`: "camvid", "cityscapes-mmseg",
    "cityscapes-mmseg-680"); downloaded weights are checked against their published SHA-256.

    Returns:
        A `cgnet.CGNet` with `.meta` (preprocessing, class names, palette, provenance).
    """
    return _package().load_model(name)


def cgnet(num_classes: int = 19, m: int = 3, n: int = 21, pretrained: bool = False):
    """A CGNet with `num_classes` classes and M, N blocks in stages 2 and 3 (the paper's M3N21).

    Args:
        num_classes: output classes (19 for Cityscapes, 11 for CamVid).
        m: blocks in stage 2 (>= 2).
        n: blocks in stage 3 (>= 2).
        pretrained: only for num_classes=11, m=3, n=21: the shipped CamVid weights (as
            `cgnet_camvid`); no other configuration has pretrained weights.

    Returns:
        The model with default metadata at `.meta` (standard preprocessing, class0.. names);
        untrained models are in training mode, pretrained ones in eval mode.
    """
    package = _package()
    if pretrained:
        if {"num_classes": num_classes, "m": m, "n": n} != _CAMVID_ARCH:
            raise package.CheckpointError(f"pretrained weights exist only for num_classes=11, m=3, n=21 (CamVid), not "
                             f"num_classes={num_classes}, m={m}, n={n}: use pretrained=False, or cgnet_camvid()")
        return package.load_model("camvid")
    model = package.CGNet(num_classes, m=m, n=n)
    model.meta = package.make_meta(model)
    return model
