"""FashionDigits scenes, the segmentation metrics, and secure segmentation over TLS processes."""

import torch

from secinfer.models.segmentation import deeplabv3_resnet
from secinfer.seg.scenes import CLASSES, load_scenes
from secinfer.seg.secure import secure_segment
from secinfer.seg.train import confusion, miou, pixel_accuracy


def test_scenes_are_fixed_and_labelled():
    x, y = load_scenes("test", 20)
    x2, y2 = load_scenes("test", 20)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # fixed seed
    assert x.shape == (20, 1, 32, 32) and y.shape == (20, 32, 32)
    assert int(y.min()) == 0 and int(y.max()) < len(CLASSES)
    for i in range(20):  # every scene has its garment and its digit
        present = set(y[i].unique().tolist())
        assert 5 in present and len(present - {0, 5}) == 1
    xt, _ = load_scenes("train", 20)
    assert not torch.equal(xt, x)  # other split, other garments and layout


def test_metrics_on_a_known_confusion():
    pred = torch.tensor([[0, 0, 1, 1]])
    target = torch.tensor([[0, 1, 1, 1]])
    conf = confusion(pred, target, 3)
    assert conf.tolist() == [[1, 0, 0], [1, 2, 0], [0, 0, 0]]
    # IoU(0) = 1 / 2, IoU(1) = 2 / 3; class 2 absent everywhere: not counted
    assert abs(miou(conf) - (0.5 + 2 / 3) / 2) < 1e-12
    assert pixel_accuracy(conf) == 0.75


def test_secure_segmentation_over_tls_processes_matches_plaintext():
    torch.manual_seed(0)
    model = deeplabv3_resnet(input_size=16, widths=(4, 8, 8), head=8).eval()
    x, y = load_scenes("test", 4)
    x, y = x[:, :, :16, :16].contiguous(), y[:, :16, :16].contiguous()
    res = secure_segment(model, (1, 16, 16), x, y, len(CLASSES), batch=2, timeout=120)
    assert res.n == 4 and res.secure_labels.shape == (4, 16, 16)
    assert res.pixel_agreement >= 0.99
    assert res.max_abs_logit_error < 0.05
    assert res.bytes_per_image > 0 and res.rounds_per_request > 0
